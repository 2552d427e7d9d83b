"""Structured-config schemas for `python -m deploy` (conf/deploy/), registered with Hydra.

Keys and types live here, values and comments in the YAML: a misspelt key, an action or
target that does not exist, or an auth mode Azure does not know fails when Hydra composes the
config, naming the key and the allowed values, before any model is loaded or any client made.
The workspace node is `common.azure_workspace.WorkspaceSettings`, as in train and flow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from common.azure_workspace import WorkspaceSettings
from common.hydra_schema import refuse_keys_outside_the_schema
from common.payloads import RequestLimits


class Action(enum.StrEnum):
    deploy = "deploy"  # serve (target=local) or deploy blue/green (target=azureml)
    status = "status"
    teardown = "teardown"
    chat = "chat"
    evaluate = "evaluate"  # answer the held-out set, log an evaluation run, tag the version
    list = "list"  # registered models, their versions, aliases and eval.* tags
    promote = "promote"  # move the gate.alias to model.version if it is within tolerance of the holder
    export = "export"  # ONNX Runtime GenAI or GGUF, gated on parity with the MLflow model


class ExportFormat(enum.StrEnum):
    onnx = "onnx"  # ONNX Runtime GenAI (its model builder)
    gguf = "gguf"  # llama.cpp (its convert_hf_to_gguf.py and quantizer)


class AuthMode(enum.StrEnum):  # Azure ML managed online endpoint auth modes
    key = "key"
    aml_token = "aml_token"
    aad_token = "aad_token"


class IdentityType(enum.StrEnum):
    user_assigned = "user_assigned"
    system_assigned = "system_assigned"


class OnFailure(enum.StrEnum):
    keep = "keep"  # keep the failed deployment for its logs
    delete = "delete"  # delete it (never the live one)


@dataclass
class ModelSelector:
    name: str = "tiny-phi3-sft"
    version: int | None = None
    alias: str | None = None
    uri: str | None = None
    azureml_job: str | None = None


@dataclass
class ParityConfig:
    check: bool = True


@dataclass
class ChatConfig:
    url: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    system: str | None = None


@dataclass
class ServerSettings:
    """The local server's timeouts and batching (values and comments: conf/deploy/target/local.yaml)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    request_timeout_s: float = 120.0
    max_batch: int = 16
    max_queue: int = 64
    max_slots_per_request: int = 4
    allowed_hosts: list[str] = field(default_factory=list)
    kv_cache_mib: float | None = None
    torch_threads: int | None = 1
    shutdown_timeout_s: float = 5.0


@dataclass
class JudgeSettings:
    """The optional LLM judge (deploy/evaluate/judge.py; values and comments: conf/deploy/deploy.yaml)."""

    url: str | None = None
    model: str = ""
    key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 128
    instructions: str = MISSING


@dataclass
class EvalSettings:
    source: str | None = None
    max_rows: int | None = None
    max_new_tokens: int = 128
    batch_size: int = 16
    tasks: list[str] = field(default_factory=list)
    judge: JudgeSettings = field(default_factory=JudgeSettings)


@dataclass
class GateSettings:
    alias: str = "champion"
    tolerance: dict[str, float | None] = field(default_factory=dict)
    tasks_tolerance: float | None = 0.05
    azure: bool = True
    azure_rows: int = 32


@dataclass
class ExportSettings:
    """action=export (values and comments: conf/deploy/deploy.yaml)."""

    precision: str | None = None
    execution_provider: str = "cpu"
    output_dir: str | None = None
    from_path: str | None = None
    max_rows: int | None = 16
    max_new_tokens: int = 32
    long_prompts: int = 2
    max_context: int = 4096
    min_agreement: float = 0.99
    tie_margin: float = 0.25
    tolerance: dict[str, float | None] = field(default_factory=dict)
    log: bool = True


@dataclass
class LocalTarget:
    name: str = "local"
    limits: RequestLimits = field(default_factory=RequestLimits)
    server: ServerSettings = field(default_factory=ServerSettings)


@dataclass
class EndpointConfig:
    name: str = "finetune-phi"
    auth_mode: AuthMode = AuthMode.key
    identity_type: IdentityType = IdentityType.user_assigned
    user_assigned_identity_id: str | None = None
    description: str = ""


@dataclass
class ProbeConfig:
    initial_delay: int = 600
    period: int = 30
    timeout: int = 10
    failure_threshold: int = 30
    success_threshold: int = 1


@dataclass
class DeploymentConfig:
    names: list[str] = field(default_factory=lambda: ["blue", "green"])
    instance_type: str = MISSING
    instance_count: int = 1
    request_timeout_ms: int = 90000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 60000
    liveness_probe: ProbeConfig = field(default_factory=ProbeConfig)
    readiness_probe: ProbeConfig = field(default_factory=ProbeConfig)
    environment_variables: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelRegistration:
    name: str = MISSING


@dataclass
class ServingEnvironment:
    name: str = "finetune-phi-serve"
    image: str | None = None


@dataclass
class Traffic:
    new_percent: int = 100


@dataclass
class SmokeTest:
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Preflight:
    roles: bool = True


@dataclass
class Teardown:
    confirm: str | None = None
    deployment: str | None = None


@dataclass
class AzureMLTarget:
    name: str = "azureml"
    workspace: WorkspaceSettings = field(default_factory=WorkspaceSettings)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    model_registration: ModelRegistration = field(default_factory=ModelRegistration)
    environment: ServingEnvironment = field(default_factory=ServingEnvironment)
    traffic: Traffic = field(default_factory=Traffic)
    smoke_test: SmokeTest = field(default_factory=SmokeTest)
    on_failure: OnFailure = OnFailure.keep
    preflight: Preflight = field(default_factory=Preflight)
    teardown: Teardown = field(default_factory=Teardown)


@dataclass
class DeployConfig:
    target: Any = MISSING  # LocalTarget | AzureMLTarget, chosen by the target group
    action: Action = Action.deploy
    model: ModelSelector = field(default_factory=ModelSelector)
    tracking_uri: str = MISSING
    output_root: str = MISSING
    port: int = 8000
    key_env: str = "FINETUNE_PHI_ENDPOINT_KEY"
    parity: ParityConfig = field(default_factory=ParityConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    format: ExportFormat = ExportFormat.onnx
    export: ExportSettings = field(default_factory=ExportSettings)


def register_configs() -> None:
    refuse_keys_outside_the_schema()
    store = ConfigStore.instance()
    store.store(name="deploy_schema", node=DeployConfig)
    store.store(group="target", name="deploy_local_schema", node=LocalTarget)
    store.store(group="target", name="deploy_azureml_schema", node=AzureMLTarget)
