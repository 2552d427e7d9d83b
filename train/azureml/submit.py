"""`python -m train target=azureml`: preflight, then compute, environment and job, in that order.

Everything that can be wrong locally is checked before any call: the workspace settings
(naming the variable to set), the job's shape against the cluster (sizes, GPUs), the data
(every row validated). Then the cluster is fetched or created, the environment fetched or
registered, the job submitted, recorded and its logs streamed. With `target.dry_run=true`
nothing is called: the job, compute and environment YAML are written to the run dir, ready
for `az ml compute create -f`, `az ml environment create -f` and `az ml job create -f`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig

from common.azure_workspace import WorkspaceSettings, ml_client
from train.azureml import RECORD, compute, environment, job

log = logging.getLogger(__name__)


def _tags(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    from train.tracking import git_sha

    return {
        "git_sha": git_sha(Path(cfg.paths.root_dir)),
        "hydra_overrides": " ".join(overrides),
        "profile": cfg.get("profile") or "none",
        "submitted_by": "finetune-phi",
    }


def check_sweeper() -> None:
    """A sweeper that needs each point's result (Optuna) cannot wait on jobs: refuse it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # composed outside a Hydra app
        return
    hydra_cfg = HydraConfig.get()
    sweeper = str(hydra_cfg.sweeper.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and "optuna" in sweeper.lower():
        raise job.JobConfigError(
            "target=azureml submits one job per sweep point and returns no eval_loss, which the Optuna "
            "sweeper needs: sweep with the basic sweeper (-m key=a,b,c) or run the search locally"
        )


def prepare_submission(cfg: DictConfig, stage_dir: Path):
    """Every entity, built and written to `stage_dir` as YAML; nothing is called."""
    check_sweeper()
    compute.check_fits(cfg)
    cluster = compute.compute_entity(cfg.target.compute)
    data_in, data_over = job.data_inputs(cfg, stage_dir / "data")
    model_in, model_over = job.model_inputs(cfg)
    overrides = job.task_overrides()
    arguments = job.job_arguments(overrides, {**data_over, **model_over})
    env = environment.environment_entity(
        cfg.target.environment, environment.write_build_context(stage_dir / "environment")
    )
    command_job = job.build_job(
        cfg,
        code_dir=job.write_code_snapshot(stage_dir / "code"),
        environment=f"azureml:{env.name}:{env.version}",
        inputs={**data_in, **model_in},
        arguments=arguments,
        tags=_tags(cfg, job.carried_overrides(overrides, set())),
    )
    job.dump_job_yaml(command_job, stage_dir / "job.yaml")
    cluster.dump(stage_dir / "compute.yaml")
    env.dump(stage_dir / "environment.yaml")
    return cluster, env, command_job


def write_record(cfg: DictConfig, record: dict) -> list[Path]:
    text = json.dumps(record, indent=2) + "\n"
    paths = [Path(cfg.paths.output_dir) / RECORD, Path(cfg.paths.output_root) / "azureml" / "last_job.json"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return paths


def submit(cfg: DictConfig, client=None, credential=None) -> dict:
    """Submit `cfg` as an Azure ML command job (or only write its YAML with target.dry_run).

    `client` (an MLClient) or `credential` (a TokenCredential) can be injected; by default
    the client is built from `target.workspace` and the environment.
    """
    target = cfg.target
    settings = WorkspaceSettings.from_config(target.workspace)
    if client is None and not target.dry_run:
        settings.check()  # before anything else: the message names the variable to set
    stage_dir = Path(cfg.paths.output_dir) / "azureml"
    _, env, command_job = prepare_submission(cfg, stage_dir)

    if target.dry_run:
        print_dry_run(stage_dir)
        return {"dry_run": True, "dir": str(stage_dir)}

    client = client or ml_client(settings, credential)
    # azure-ai-ml's own client-side validation of the job (schema, input references), still
    # before anything is created.
    client.jobs.validate(command_job, raise_on_failure=True)
    compute.ensure_compute(client, target.compute)
    environment.ensure_environment(client, env)
    submitted = client.jobs.create_or_update(command_job)
    record = {
        "job_name": submitted.name,
        "studio_url": submitted.studio_url,
        "experiment_name": cfg.logger.experiment_name,
        "subscription_id": client.subscription_id,
        "resource_group": client.resource_group_name,
        "workspace_name": client.workspace_name,
        "registered_model_name": cfg.logger.registered_model_name,
        "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    paths = write_record(cfg, record)
    print_submitted(record, paths[0], target.stream)
    if target.stream:
        try:
            client.jobs.stream(submitted.name)
        except KeyboardInterrupt:
            print(f"Stopped streaming; the job keeps running: az ml job stream -n {submitted.name}")
    return record


def print_submitted(record: dict, record_path: Path, streaming: bool) -> None:
    name = record["job_name"]
    lines = [
        "",
        f"Submitted Azure ML job {name}",
        f"  studio         {record['studio_url']}",
        f"  experiment     {record['experiment_name']}",
        f"  record         {record_path}",
        f"  model          {record['registered_model_name']} (registered in the workspace when the job ends)",
        "  logs           streaming below (Ctrl-C stops streaming, not the job)"
        if streaming
        else f"  logs           az ml job stream -n {name}",
    ]
    print("\n".join(lines), flush=True)


def print_dry_run(stage_dir: Path) -> None:
    print(
        "\n".join(
            [
                "",
                f"Dry run: nothing was called. Azure ML YAML in {stage_dir}:",
                "  az ml compute create -f compute.yaml",
                "  az ml environment create -f environment.yaml",
                "  az ml job create -f job.yaml",
            ]
        )
    )
