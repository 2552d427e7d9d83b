"""The command job: `python -m train <your overrides> target=local ...` on Azure ML.

One recipe: the job runs the same entry point with the overrides given on this command line
(so the job composes the same config from the same conf/), minus what belongs to this side
(`target`, `paths`, `hydra`, ...), plus the job's own data and output locations:

- local data is prepared here (validated, converted, split; a bad row stops before anything is
  created) and its train.jsonl/test.jsonl upload as `uri_file` inputs; an Azure ML data asset
  (`azureml:NAME:VERSION`) or a datastore/storage URI is passed as an input as is; a hub id
  stays a hub id (the job downloads it);
- a local model directory uploads as a `uri_folder` input;
- the run folder (checkpoints, logs, prepared data) lives in the job's `run` output, a
  read-write mount that survives a low-priority preemption, and `run_id` is fixed, so the
  rerun's `resume=auto` continues from the last checkpoint;
- MLflow: Azure ML sets MLFLOW_TRACKING_URI in the job, which `logger.tracking_uri` reads, and
  the job's experiment is `logger.experiment_name`, so the recipe logs into the job's run.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from azure.ai.ml import Input, Output, PyTorchDistribution, command
from azure.ai.ml.entities import ManagedIdentityConfiguration, UserIdentityConfiguration
from omegaconf import OmegaConf

from common.paths import PROJECT_ROOT
from train.azureml.compute import shm_size
from train.config import JobIdentity

RUN_OUTPUT = "run"  # the job output holding the run folder
JOB_RUN_ID = "azureml"  # the run folder's name inside that output: fixed, so a rerun resumes
# Overrides that describe this side of the submission, not the training run.
LOCAL_ONLY_KEYS = ("target", "paths", "hydra", "run_id", "resume", "estimate")
REMOTE_PREFIXES = ("azureml:", "azureml://", "https://", "http://", "wasbs://", "abfss://", "adl://")


class JobConfigError(ValueError):
    """The config cannot become a job; the message names the key and what to do."""


def placeholder(kind: str, name: str) -> str:
    """`${{inputs.NAME}}`: Azure ML substitutes the mounted path when the job starts."""
    return "${{" + f"{kind}.{name}" + "}}"


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def carried_overrides(overrides: list[str], replaced: set[str]) -> list[str]:
    """The user's overrides the job repeats: all but this side's and those replaced by inputs."""
    kept = []
    for override in overrides:
        key = override_key(override)
        if re.split(r"[./@]", key, maxsplit=1)[0] in LOCAL_ONLY_KEYS or key in replaced:
            continue
        kept.append(override)
    return kept


def task_overrides() -> list[str]:
    """This run's command-line overrides (a sweep point's own values in a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _uri_input(location: str) -> Input:
    from train.prepare.sources import SUFFIXES  # the data files train.prepare reads

    kind = "uri_file" if location.rstrip("/").lower().endswith(SUFFIXES) else "uri_folder"
    return Input(type=kind, path=location)


def _looks_like_path(location: str) -> bool:
    return location.startswith((".", "~", "/")) or Path(location).is_absolute()


def data_inputs(cfg, upload_dir: Path) -> tuple[dict[str, Input], dict[str, str]]:
    """Job inputs for `cfg.data`, and the overrides pointing the job's config at them.

    Local data is prepared and its files copied to `upload_dir` (in the run dir: what was
    uploaded stays with the run, whatever happens to the preparation cache later).
    """
    from train.data import prepare_for, sources

    train_source, eval_source = sources(cfg.data)
    if train_source.is_local_files:
        prepared = prepare_for(cfg)  # validates every row here, before anything is created
        upload_dir.mkdir(parents=True, exist_ok=True)
        for name in ("train.jsonl", "test.jsonl", "stats.json"):
            shutil.copyfile(prepared.dir / name, upload_dir / name)
        return (
            {
                "train_data": Input(type="uri_file", path=str(upload_dir / "train.jsonl")),
                "test_data": Input(type="uri_file", path=str(upload_dir / "test.jsonl")),
            },
            {
                "data.source": placeholder("inputs", "train_data"),
                "data.eval_source": placeholder("inputs", "test_data"),
                "data.format": "messages",  # prepared files are in the messages schema
                "data.dedupe": "false",  # done already
                "data.output_dir": "null",  # a local folder means nothing on the node
            },
        )
    inputs: dict[str, Input] = {}
    overrides: dict[str, str] = {}
    for key, name, source in (
        ("data.source", "train_data", train_source),
        ("data.eval_source", "test_data", eval_source),
    ):
        if source is None or (key == "data.eval_source" and not cfg.data.eval_source):
            continue
        location = source.location
        if location.startswith(REMOTE_PREFIXES):
            inputs[name] = _uri_input(location)
        elif Path(location).expanduser().exists():  # a hub-layout folder on this machine
            inputs[name] = Input(type="uri_folder", path=str(Path(location).expanduser().resolve()))
        elif _looks_like_path(location):
            raise JobConfigError(f"{key}={location}: no such file or directory")
        else:
            continue  # a hub dataset id: the job downloads it
        overrides[key] = placeholder("inputs", name)
    if cfg.data.output_dir:
        overrides["data.output_dir"] = "null"
    return inputs, overrides


def model_inputs(cfg) -> tuple[dict[str, Input], dict[str, str]]:
    """A local model directory uploads as an input; hub ids and `${...}` values (resolved
    in the job, like the tiny model's builder) stay as they are."""
    raw = OmegaConf.to_container(cfg.model, resolve=False)["name_or_path"]
    if "${" in str(raw):
        return {}, {}
    path = Path(str(raw)).expanduser()
    if path.exists():
        return (
            {"base_model": Input(type="uri_folder", path=str(path.resolve()))},
            {"model.name_or_path": placeholder("inputs", "base_model")},
        )
    if _looks_like_path(str(raw)):
        raise JobConfigError(f"model.name_or_path={raw}: no such directory")
    return {}, {}


def job_arguments(overrides: list[str], replaced: dict[str, str]) -> list[str]:
    """`python -m train` arguments inside the job (Hydra override syntax)."""
    return [
        *carried_overrides(overrides, set(replaced)),
        *(f"{key}={value}" for key, value in replaced.items()),
        "target=local",
        f"paths.output_root={placeholder('outputs', RUN_OUTPUT)}",
        f"run_id={JOB_RUN_ID}",
    ]


def job_command(arguments: list[str]) -> str:
    return shlex.join(["python", "-m", "train", *arguments])


def write_code_snapshot(out_dir: Path) -> Path:
    """The code the job runs: train/, the common/ modules it imports, and conf/ of this checkout
    (the image holds the installed packages)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("train", "common", "conf"):
        shutil.copytree(PROJECT_ROOT / name, out_dir / name, ignore=ignore)
    return out_dir


def _identity(kind: JobIdentity | None):
    if kind is None:
        return None
    return UserIdentityConfiguration() if kind == JobIdentity.user else ManagedIdentityConfiguration()


def build_job(
    cfg, *, code_dir: Path, environment, inputs: dict[str, Input], arguments: list[str], tags: dict
):
    """The azure-ai-ml Command for this config."""
    target = cfg.target
    distributed = target.instance_count > 1 or target.process_count_per_instance > 1
    return command(
        code=str(code_dir),
        command=job_command(arguments),
        environment=environment,
        compute=target.compute.name,
        inputs=inputs,
        outputs={RUN_OUTPUT: Output(type="uri_folder", mode="rw_mount")},
        instance_count=target.instance_count,
        distribution=(
            PyTorchDistribution(process_count_per_instance=target.process_count_per_instance)
            if distributed
            else None
        ),
        experiment_name=cfg.logger.experiment_name,
        display_name=target.display_name or f"{cfg.model.short_name}-{cfg.get('profile') or 'default'}",
        description="python -m train (finetune-phi), submitted with target=azureml",
        tags=tags,
        identity=_identity(target.job_identity),
        shm_size=shm_size(target.compute),
    )


def dump_job_yaml(command_job, path: Path) -> Path:
    """The job as `az ml job create -f` / `load_job` read it.

    azure-ai-ml 1.35.2's `dump()` writes a local input path as `azureml:<path>` (its schema
    tries the asset-reference field first), which then names a non-existent data asset; the
    local paths are put back as given.
    """
    import yaml

    as_job = command_job._to_job()
    data = as_job._to_dict()
    for name, value in (as_job.inputs or {}).items():
        given = str(getattr(value, "path", "") or "")
        if given and not given.startswith(REMOTE_PREFIXES):
            data["inputs"][name]["path"] = given
    if path.exists():
        raise FileExistsError(f"{path} exists; a run's job YAML is never overwritten")
    path.write_text(yaml.safe_dump(json_safe(data), sort_keys=False), encoding="utf-8")
    return path


def json_safe(value):
    """Plain dicts and lists (the SDK's dict has OrderedDicts that safe_dump refuses)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
