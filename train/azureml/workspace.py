"""Which Azure ML workspace, and an MLClient for it.

Settings come from config keys (`target.workspace.*`), falling back to the environment
variables AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME, or, when
none of the three is set, to azure-ai-ml's own `config.json` (the file the studio offers for
download; searched from the current directory upwards, or `config_path`). Credentials come
from azure-identity and are never stored: only their kind (`default`, `azure_cli`) is config.

Shared by the training target (train/azureml) and deploy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Setting name -> the environment variable that supplies it when the config leaves it unset.
ENV_VARS = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "workspace_name": "AZUREML_WORKSPACE_NAME",
}
CREDENTIALS = ("default", "azure_cli")


class WorkspaceSettingsError(ValueError):
    """The workspace cannot be identified; the message says which variable to set."""


@dataclass(frozen=True)
class WorkspaceSettings:
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace_name: str | None = None
    # azure-ai-ml config.json, or a directory to search upwards from (None: the cwd).
    config_path: str | None = None
    # default: DefaultAzureCredential (env vars, managed identity, az login, ...).
    # azure_cli: AzureCliCredential (`az login`), as in the seed tutorial.
    credential: str = "default"

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
    ) -> WorkspaceSettings:
        """Settings from a config node (e.g. `cfg.target.workspace`), env vars filling gaps."""
        node = dict(node or {})
        unknown = set(node) - {f.name for f in fields(cls)}
        if unknown:
            raise WorkspaceSettingsError(f"unknown workspace key(s) {sorted(unknown)}")
        values = {name: node.get(name) or environ.get(var) or None for name, var in ENV_VARS.items()}
        return cls(
            **values,
            config_path=node.get("config_path"),
            credential=node.get("credential") or "default",
        )

    def check(self) -> None:
        """Raise WorkspaceSettingsError unless the workspace is fully identified (no network)."""
        if self.credential not in CREDENTIALS:
            raise WorkspaceSettingsError(
                f"target.workspace.credential={self.credential!r}: use one of {', '.join(CREDENTIALS)}"
            )
        given = {name: getattr(self, name) for name in ENV_VARS}
        missing = [name for name, value in given.items() if not value]
        if not missing:
            return
        if len(missing) < len(ENV_VARS):
            raise WorkspaceSettingsError(
                "Azure ML workspace settings incomplete: set "
                + ", ".join(f"{ENV_VARS[name]} (or target.workspace.{name})" for name in missing)
            )
        if self.find_config_file() is None:
            raise WorkspaceSettingsError(
                "No Azure ML workspace configured: set the environment variables "
                + ", ".join(ENV_VARS.values())
                + " (or target.workspace.subscription_id/resource_group/workspace_name), or put the "
                "workspace's config.json (studio: workspace menu > Download config file) in this "
                "directory or point target.workspace.config_path at it"
            )

    def find_config_file(self) -> str | None:
        """azure-ai-ml's config.json for these settings, searched as MLClient.from_config does."""
        # azure-ai-ml's own search (private, pinned in constraints.txt), so both agree.
        from azure.ai.ml._file_utils.file_utils import traverse_up_path_and_find_file

        start = Path(self.config_path or ".")
        if start.is_file():
            return str(start)
        for directory in (".azureml", "aml_config", None):
            found = traverse_up_path_and_find_file(
                path=start, file_name="config.json", directory_name=directory, num_levels=20
            )
            if found:
                return str(found)
        return None


def make_credential(kind: str):
    """An azure-identity credential of the configured kind (constructing it makes no call)."""
    from azure.identity import AzureCliCredential, DefaultAzureCredential

    if kind == "azure_cli":
        return AzureCliCredential()
    if kind == "default":
        return DefaultAzureCredential()
    raise WorkspaceSettingsError(f"target.workspace.credential={kind!r}: use one of {', '.join(CREDENTIALS)}")


def ml_client(settings: WorkspaceSettings, credential=None):
    """An MLClient for the workspace; `credential` (any azure-core TokenCredential) is
    injectable, by default one is made from `settings.credential`."""
    from azure.ai.ml import MLClient

    settings.check()
    credential = credential or make_credential(settings.credential)
    if settings.subscription_id:
        return MLClient(
            credential, settings.subscription_id, settings.resource_group, settings.workspace_name
        )
    return MLClient.from_config(credential, path=settings.find_config_file())
