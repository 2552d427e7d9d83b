"""Find the model to deploy without copy-pasting job names or run ids.

Sources, in the order `resolve` tries them (`model.*` keys of conf/deploy/deploy.yaml):
- `model.uri`: any MLflow model URI or local MLflow model directory, as given;
- `model.azureml_job`: an Azure ML training job's MLflow model output, by job name, or
  `last` for the job recorded in `<output_root>/azureml/last_job.json` by `python -m train
  target=azureml`;
- `model.name` with `model.version`, `model.alias`, or neither: the version holding the
  gate's alias (`champion`, what passed the promotion gate) when one does, else the latest
  version, in the MLflow registry at `tracking_uri`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

LAST_JOB_RECORD = Path("azureml") / "last_job.json"


class ModelNotFound(LookupError):
    pass


def registered_version(
    client: MlflowClient, name: str, version: int | str | None = None, alias: str | None = None
) -> str:
    """The version number an explicit version, an alias, or "latest" (neither) stands for."""
    from mlflow.exceptions import MlflowException

    if version is not None and alias is not None:
        raise ValueError("set model.version or model.alias, not both")
    if alias is not None:
        try:
            return str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException as e:
            raise ModelNotFound(f"{name!r} has no version with the alias {alias!r} ({e.message})") from None
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise ModelNotFound(
            f"no registered model named {name!r} in {client.tracking_uri}; "
            "train one with `python -m train` (or set model.name / MLFLOW_TRACKING_URI)"
        )
    if version is None:
        return str(max(int(v.version) for v in versions))
    if str(version) not in {str(v.version) for v in versions}:
        known = sorted(int(v.version) for v in versions)
        raise ModelNotFound(f"{name!r} has no version {version}; registered versions: {known}")
    return str(version)


def alias_holder(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version holding `alias`, or None when none does. Read from the registered model's alias
    table: looking the alias up raises for a missing one with a code that differs by store (the
    sqlite store's is INVALID_PARAMETER_VALUE), and a promotion must never take an unreachable
    store for "no holder yet"."""
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def model_uri(
    client: MlflowClient, name: str, version: int | str | None = None, alias: str | None = None
) -> str:
    """`models:/NAME/VERSION`, or `models:/NAME@ALIAS` for an alias (checked to exist)."""
    return version_ref(name, registered_version(client, name, version, alias), alias).uri


@dataclass(frozen=True)
class ModelRef:
    """Where the model is, and what it is called where it will be registered."""

    uri: str  # loadable by MLflow here (models:/..., runs:/..., a directory) or an azureml:// path
    name: str  # the registered name (MLflow or Azure ML)
    version: str | None = None
    azureml_job: str | None = None  # the Azure ML job that produced it, when it came from one


def version_ref(name: str, version: str, alias: str | None = None) -> ModelRef:
    """A registered version of `name`, addressed by `alias` when one is given."""
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    return ModelRef(uri=uri, name=name, version=str(version))


def last_job_name(output_root: str | Path) -> str:
    """The job name `python -m train target=azureml` recorded last."""
    record = Path(output_root) / LAST_JOB_RECORD
    if not record.exists():
        raise ModelNotFound(
            f"model.azureml_job=last, but {record} does not exist: submit a training job with "
            "`python -m train target=azureml` first, or give the job name (model.azureml_job=<name>)"
        )
    try:
        return json.loads(record.read_text(encoding="utf-8"))["job_name"]
    except (ValueError, KeyError) as e:
        raise ModelNotFound(f"{record}: no job_name in it ({e}); give model.azureml_job=<name>") from e


def azureml_job_model_path(job_name: str) -> str:
    """The job's MLflow model, as the training recipe logs it inside the job."""
    return f"azureml://jobs/{job_name}/outputs/artifacts/paths/model/"


def resolve(
    model_cfg,
    client: MlflowClient | None,
    output_root: str | Path,
    for_azureml: bool,
    default_alias: str | None = None,
) -> ModelRef:
    """The model `model_cfg` points at. An Azure ML job's model is an azureml:// path for
    target=azureml, and `runs:/<job>/model` (job name = MLflow run id) for local use, which
    needs MLFLOW_TRACKING_URI set to the workspace. With neither a version nor an alias, the
    version holding `default_alias` when one does, else the latest."""
    if model_cfg.get("uri"):
        return ModelRef(uri=model_cfg.uri, name=model_cfg.name)
    if model_cfg.get("azureml_job"):
        job = model_cfg.azureml_job
        job = last_job_name(output_root) if job == "last" else job
        uri = azureml_job_model_path(job) if for_azureml else f"runs:/{job}/model"
        return ModelRef(uri=uri, name=model_cfg.name, azureml_job=job)
    if client is None:
        raise ValueError("an MLflow client is needed to look up registered models")
    name, alias, version = model_cfg.name, model_cfg.get("alias"), model_cfg.get("version")
    if version is None and alias is None and default_alias:
        latest = registered_version(client, name)  # also: "no such model" with the fix
        holder = alias_holder(client, name, default_alias)
        if holder is not None:
            print(f"model: {name} v{holder} (@{default_alias}; the latest is v{latest})", flush=True)
            return version_ref(name, holder)
        print(
            f"model: {name} v{latest} (the latest: no version holds @{default_alias} yet; "
            f"`python -m deploy action=promote model.name={name} model.version={latest}` gates one)",
            flush=True,
        )
        return version_ref(name, latest)
    return version_ref(name, registered_version(client, name, version, alias), alias)


def find_model(
    model_cfg,
    tracking_uri: str,
    output_root: str | Path,
    for_azureml: bool,
    default_alias: str | None = None,
) -> ModelRef:
    """`resolve` against the MLflow store at `tracking_uri` (the registry only when it is needed)."""
    mlflow.set_tracking_uri(tracking_uri)
    needs_registry = not (model_cfg.get("uri") or model_cfg.get("azureml_job"))
    client = MlflowClient() if needs_registry else None
    return resolve(model_cfg, client, output_root, for_azureml=for_azureml, default_alias=default_alias)


def registry_version(ref: ModelRef):
    """The registry's ModelVersion of a `models:/` reference, else None."""
    if ref.uri.startswith("models:/") and ref.version:
        return MlflowClient().get_model_version(ref.name, ref.version)
    return None


def training_run_id(ref: ModelRef) -> str | None:
    """The MLflow run that produced the model (an Azure ML job's name is its run id), if known."""
    if ref.azureml_job:
        return ref.azureml_job
    if (registered := registry_version(ref)) is not None:
        return registered.run_id
    if ref.uri.startswith("runs:/"):
        return ref.uri.split("/")[1]
    return None
