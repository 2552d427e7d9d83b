"""The azure-ai-ml entities a deployment is made of: endpoint, deployment, model, scoring code.

The scoring code is deploy/scoring/score.py, the same module the local server loads the model
with, uploaded with the `common` modules it imports (`scoring_code_dir`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.entities import (
    CodeConfiguration,
    IdentityConfiguration,
    ManagedIdentityConfiguration,
    ManagedOnlineDeployment,
    ManagedOnlineEndpoint,
    Model,
    OnlineRequestSettings,
    ProbeSettings,
)

from common.paths import PROJECT_ROOT
from deploy.azure.errors import DeployError
from deploy.config import IdentityType
from deploy.registry.find import ModelRef

COMMON_DIR = PROJECT_ROOT / "common"
SCORING_SCRIPT = PROJECT_ROOT / "deploy" / "scoring" / "score.py"
# What score.py imports besides installed packages: the neutral payload contract, generation and
# the one rendering it uses (tests/deploy/scoring runs score.py from these files under azmlinfsrv).
SCORING_COMMON_MODULES = ("__init__.py", "payloads.py", "generation.py", "rendering.py")


def endpoint_entity(endpoint_cfg) -> ManagedOnlineEndpoint:
    if endpoint_cfg.identity_type is IdentityType.user_assigned:
        if not endpoint_cfg.user_assigned_identity_id:
            raise DeployError(
                "target.endpoint.identity_type=user_assigned needs the identity's ARM resource id: set "
                "AZURE_MANAGED_IDENTITY_RESOURCE_ID or target.endpoint.user_assigned_identity_id "
                "(/subscriptions/.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME), "
                "or use target.endpoint.identity_type=system_assigned"
            )
        identity = IdentityConfiguration(
            type="user_assigned",
            user_assigned_identities=[
                ManagedIdentityConfiguration(resource_id=endpoint_cfg.user_assigned_identity_id)
            ],
        )
    else:
        identity = IdentityConfiguration(type="system_assigned")
    return ManagedOnlineEndpoint(
        name=endpoint_cfg.name,
        description=endpoint_cfg.description,
        auth_mode=endpoint_cfg.auth_mode.value,
        identity=identity,
    )


def _probe(probe_cfg) -> ProbeSettings:
    return ProbeSettings(**dict(probe_cfg))


def scoring_code_dir(out_dir: Path) -> Path:
    """The deployment's code snapshot: score.py with the `common` package it imports beside it."""
    (out_dir / "common").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCORING_SCRIPT, out_dir / "score.py")
    for name in SCORING_COMMON_MODULES:
        shutil.copyfile(COMMON_DIR / name, out_dir / "common" / name)
    return out_dir


def deployment_entity(
    deployment_cfg, endpoint_name: str, name: str, model, environment, code_dir: Path
) -> ManagedOnlineDeployment:
    """The deployment: our scoring script and environment around the registered MLflow model."""
    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=endpoint_name,
        model=model,
        environment=environment,
        code_configuration=CodeConfiguration(code=str(code_dir), scoring_script="score.py"),
        instance_type=deployment_cfg.instance_type,
        instance_count=deployment_cfg.instance_count,
        request_settings=OnlineRequestSettings(
            request_timeout_ms=deployment_cfg.request_timeout_ms,
            max_concurrent_requests_per_instance=deployment_cfg.max_concurrent_requests_per_instance,
            max_queue_wait_ms=deployment_cfg.max_queue_wait_ms,
        ),
        liveness_probe=_probe(deployment_cfg.liveness_probe),
        readiness_probe=_probe(deployment_cfg.readiness_probe),
        environment_variables=dict(deployment_cfg.environment_variables or {}),
    )


def model_entity(ref: ModelRef, name: str, local_path: str | None = None) -> Model:
    """The workspace model (type mlflow_model): an Azure ML job's output, or a local copy."""
    tags = {"source": ref.uri}
    if ref.azureml_job:
        tags["azureml_job"] = ref.azureml_job
    return Model(
        name=name,
        path=local_path or ref.uri,
        type=AssetTypes.MLFLOW_MODEL,
        description="fine-tuned chat model (finetune-phi)",
        tags=tags,
    )


def register_model(client, ref: ModelRef, name: str, tracking_uri: str):
    """The model in the workspace registry, registered from wherever it is."""
    if ref.uri.startswith("azureml://"):
        return client.models.create_or_update(model_entity(ref, name))
    if tracking_uri.startswith("azureml:") and ref.uri.startswith("models:/") and ref.version:
        # Logged through azureml-mlflow: the MLflow registry *is* the workspace registry.
        return client.models.get(ref.name, version=ref.version)
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        ref.uri, dst_path=tempfile.mkdtemp(prefix="finetune-phi-model-")
    )
    return client.models.create_or_update(model_entity(ref, name, local_path=local))
