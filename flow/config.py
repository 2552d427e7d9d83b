"""Structured-config schemas for `python -m flow.connect` (flow/conf/), registered with Hydra.

Keys and types live here, values and comments in the YAML; a misspelt key or a payload or
target that does not exist fails when Hydra composes the config, naming the key and the
allowed values. The workspace node is `common.azure_workspace.WorkspaceSettings`, the same
schema train and deploy use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from common.azure_workspace import WorkspaceSettings
from common.hydra_schema import refuse_keys_outside_the_schema
from common.payloads import Shape


@dataclass
class LocalTarget:
    name: str = "local"
    host: str = "127.0.0.1"
    port: int = 8000
    route: str = "/score"
    payload: Shape = Shape.openai
    key_env: str = "FINETUNE_PHI_ENDPOINT_KEY"


@dataclass
class AzureMLTarget:
    name: str = "azureml"
    endpoint_name: str = MISSING
    deployment: str | None = None
    payload: Shape = Shape.seedB
    workspace_connection: bool = True
    workspace: WorkspaceSettings = field(default_factory=WorkspaceSettings)


@dataclass
class ConnectConfig:
    target: Any = MISSING  # LocalTarget | AzureMLTarget, chosen by the target group
    name: str = "finetune_phi_endpoint"
    openai_name: str = "finetune_phi_openai"
    payload: Shape = "${target.payload}"  # type: ignore[assignment]
    timeout_s: float = 60
    max_retries: int = 2
    telemetry: bool | None = False


def register_configs() -> None:
    refuse_keys_outside_the_schema()
    store = ConfigStore.instance()
    store.store(name="connect_schema", node=ConnectConfig)
    store.store(group="target", name="connect_local_schema", node=LocalTarget)
    store.store(group="target", name="connect_azureml_schema", node=AzureMLTarget)
