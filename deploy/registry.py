"""Find a registered model version without copy-pasting job names or run ids."""

from __future__ import annotations

from mlflow.tracking import MlflowClient


class ModelNotFound(LookupError):
    pass


def model_uri(
    client: MlflowClient, name: str, version: int | str | None = None, alias: str | None = None
) -> str:
    """`models:/NAME/VERSION` for an explicit version, an alias, or the latest version."""
    if version is not None and alias is not None:
        raise ValueError("set model.version or model.alias, not both")
    if alias is not None:
        return f"models:/{client.get_model_version_by_alias(name, alias).name}@{alias}"
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise ModelNotFound(
            f"no registered model named {name!r} in {client.tracking_uri}; "
            "train one with `python -m train` (or set model.name / MLFLOW_TRACKING_URI)"
        )
    if version is None:
        return f"models:/{name}/{max(int(v.version) for v in versions)}"
    if str(version) not in {str(v.version) for v in versions}:
        known = sorted(int(v.version) for v in versions)
        raise ModelNotFound(f"{name!r} has no version {version}; registered versions: {known}")
    return f"models:/{name}/{version}"
