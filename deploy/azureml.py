"""Managed online endpoint deployment, blue/green, through azure-ai-ml entities.

`deploy()` never deletes an endpoint and never touches the live deployment:
1. register the model in the workspace (type mlflow_model) and the serving environment;
2. create the endpoint if it does not exist (an existing one is left as it is);
3. create or update the deployment that carries no traffic (`deployment.names` alternate);
4. smoke-test it with a real request (`online_endpoints.invoke(deployment_name=...)`);
5. the gate (`gate.azure`, deploy/azureml_gate.py): it and the live deployment answer the same
   held-out conversations, and it must be within `gate.tolerance` of the live one;
6. only then move `traffic.new_percent` to it; the previous deployment keeps the rest.
A failure in 3, 4 or 5 leaves traffic where it was; the new deployment is kept for its logs
or deleted (`on_failure`), never the live one. `teardown()` deletes only on confirmation.

The scoring code is deploy/scoring/score.py, the same module the local server runs, uploaded
with the `common` modules it imports (`scoring_code_dir`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
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
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from omegaconf import OmegaConf

from common.azure_arm import arm_client, arm_error, arm_list, arm_request
from common.paths import PROJECT_ROOT
from common.payloads import Shape, parse_answer
from deploy.config import IdentityType, OnFailure
from deploy.registry.find import ModelRef

log = logging.getLogger(__name__)

COMMON_DIR = PROJECT_ROOT / "common"
SCORING_SCRIPT = Path(__file__).resolve().parent / "scoring" / "score.py"
# What score.py imports besides installed packages: the neutral payload contract and generation.
SCORING_COMMON_MODULES = ("__init__.py", "payloads.py", "generation.py")


class DeployError(RuntimeError):
    """The deployment did not go through; the message says what state things were left in."""


# ---------------------------------------------------------------- entities


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


# ---------------------------------------------------------------- blue/green planning


def live_traffic(endpoint) -> dict[str, int]:
    return {name: int(share) for name, share in (endpoint.traffic or {}).items() if int(share) > 0}


def pick_new_deployment(names: list[str], traffic: Mapping[str, int]) -> str:
    """The first configured name carrying no traffic: updating a live one is not blue/green."""
    for name in names:
        if not traffic.get(name):
            return name
    raise DeployError(
        f"every deployment name in target.deployment.names {list(names)} carries traffic {dict(traffic)}; "
        "move traffic off one first, or add a name to target.deployment.names"
    )


def traffic_after(current: Mapping[str, int], new: str, new_percent: int) -> dict[str, int]:
    """`new` gets `new_percent`; the others share the rest in proportion to what they had."""
    if not 0 < new_percent <= 100:
        raise DeployError(f"target.traffic.new_percent={new_percent}: expected 1..100")
    others = {k: v for k, v in current.items() if k != new and v > 0}
    if not others:
        return {new: 100}
    rest, total = 100 - new_percent, sum(others.values())
    shares = {k: rest * v // total for k, v in others.items()}
    largest = max(others, key=others.get)
    shares[largest] += rest - sum(shares.values())  # integer remainder to the largest
    return {new: new_percent, **shares}


def smoke_test(client, endpoint_name: str, deployment_name: str, payload: Mapping) -> str:
    """A real request to the new deployment only; returns the answer text or raises DeployError."""
    with tempfile.TemporaryDirectory() as tmp:
        request_file = Path(tmp) / "request.json"
        request_file.write_text(json.dumps(payload), encoding="utf-8")
        try:
            raw = client.online_endpoints.invoke(
                endpoint_name, request_file=str(request_file), deployment_name=deployment_name
            )
        except Exception as e:
            raise DeployError(
                f"smoke test request to {deployment_name} failed: {type(e).__name__}: {e}"
            ) from e
    try:
        return parse_answer(Shape.openai, json.loads(raw))
    except ValueError as e:  # not JSON, or not a chat completion
        raise DeployError(
            f"smoke test of {deployment_name}: not a chat completion: {str(raw)[:300]!r}"
        ) from e


def _get_endpoint(client, name: str):
    try:
        return client.online_endpoints.get(name)
    except ResourceNotFoundError:
        return None


def deploy(cfg, client, ref: ModelRef, environment, tracking_uri: str, gate=None) -> dict:
    """Blue/green deploy of `ref` to `cfg.target.endpoint.name`; returns what was done. `gate`
    (deploy.azureml_gate.DeploymentGate) decides after the smoke test whether traffic may move."""
    target = cfg.target
    endpoint_name = target.endpoint.name

    model = register_model(client, ref, target.model_registration.name, tracking_uri)
    log.info("model registered in the workspace: %s", getattr(model, "id", model))

    endpoint = _get_endpoint(client, endpoint_name)
    if endpoint is None:
        log.info("creating endpoint %s", endpoint_name)
        endpoint = client.online_endpoints.begin_create_or_update(endpoint_entity(target.endpoint)).result()
    before = live_traffic(endpoint)
    new_name = pick_new_deployment(list(target.deployment.names), before)
    log.info("traffic now %s; deploying %s beside it", before or "{}", new_name)

    code_dir = scoring_code_dir(Path(tempfile.mkdtemp(prefix="finetune-phi-scoring-")))
    deployment = deployment_entity(target.deployment, endpoint_name, new_name, model, environment, code_dir)
    try:
        client.online_deployments.begin_create_or_update(deployment).result()
        payload = OmegaConf.to_container(target.smoke_test.payload, resolve=True)
        answer = smoke_test(client, endpoint_name, new_name, payload)
        if gate is not None:
            gate(client, endpoint_name, new_name, before)
    except Exception as e:
        state = f"traffic left as it was ({before or 'none'})"
        if target.on_failure is OnFailure.delete:
            try:
                client.online_deployments.begin_delete(name=new_name, endpoint_name=endpoint_name).result()
                state += f"; the failed deployment {new_name} was deleted"
            except Exception as delete_error:  # report both, keep the first cause
                state += f"; deleting {new_name} failed too ({delete_error})"
        else:
            state += f"; the failed deployment {new_name} was kept: read its logs with `az ml online-deployment get-logs -e {endpoint_name} -n {new_name}`"
        raise DeployError(f"deployment {new_name} failed: {e}; {state}") from e

    after = traffic_after(before, new_name, int(target.traffic.new_percent))
    endpoint = client.online_endpoints.get(endpoint_name)
    endpoint.traffic = after
    client.online_endpoints.begin_create_or_update(endpoint).result()
    log.info("traffic moved: %s -> %s", before or "{}", after)
    return {
        "endpoint": endpoint_name,
        "deployment": new_name,
        "traffic_before": before,
        "traffic_after": after,
        "smoke_test_answer": answer,
        "scoring_uri": getattr(endpoint, "scoring_uri", None),
    }


# ---------------------------------------------------------------- status and teardown


def status(client) -> list[dict]:
    """Every online endpoint in the workspace with its deployments and traffic."""
    rows = []
    for endpoint in client.online_endpoints.list():
        deployments = [
            {
                "name": d.name,
                "instance_type": d.instance_type,
                "instance_count": d.instance_count,
                "state": d.provisioning_state,
                "model": d.model if isinstance(d.model, str) else getattr(d.model, "id", None),
            }
            for d in client.online_deployments.list(endpoint.name)
        ]
        rows.append(
            {
                "endpoint": endpoint.name,
                "scoring_uri": endpoint.scoring_uri,
                "auth_mode": endpoint.auth_mode,
                "state": endpoint.provisioning_state,
                "traffic": dict(endpoint.traffic or {}),
                "deployments": deployments,
            }
        )
    return rows


def format_status(rows: list[dict]) -> str:
    if not rows:
        return "no online endpoints in this workspace"
    lines = []
    for row in rows:
        lines.append(f"{row['endpoint']}  [{row['state']}]  auth={row['auth_mode']}  {row['scoring_uri']}")
        for d in row["deployments"]:
            share = row["traffic"].get(d["name"], 0)
            lines.append(
                f"  {d['name']:<10} {share:>3}%  {d['instance_type']} x{d['instance_count']}  [{d['state']}]  {d['model']}"
            )
    return "\n".join(lines)


def check_teardown_confirmed(endpoint_name: str, confirm: str | None) -> None:
    if confirm != endpoint_name:
        raise DeployError(
            f"action=teardown deletes endpoint {endpoint_name} and every deployment on it (it stops the "
            f"cost, and the traffic). Repeat its name to confirm: target.teardown.confirm={endpoint_name}"
        )


def teardown(client, endpoint_name: str, confirm: str | None, deployment: str | None = None) -> str:
    """Delete one idle deployment, or the whole endpoint when `confirm` repeats its name."""
    if deployment:
        endpoint = client.online_endpoints.get(endpoint_name)
        share = live_traffic(endpoint).get(deployment, 0)
        if share:
            raise DeployError(
                f"deployment {deployment} carries {share}% of {endpoint_name}'s traffic; move it first"
            )
        client.online_deployments.begin_delete(name=deployment, endpoint_name=endpoint_name).result()
        return f"deleted deployment {deployment} of {endpoint_name}"
    check_teardown_confirmed(endpoint_name, confirm)
    client.online_endpoints.begin_delete(name=endpoint_name).result()
    return f"deleted endpoint {endpoint_name}"


# ---------------------------------------------------------------- identity roles preflight

# What a user-assigned endpoint identity needs, by the role Azure documents for it
# (concept-endpoints-online-auth: Azure assigns these to a system-assigned identity itself and to a
# user-assigned one never; how-to-access-resources-from-endpoints-managed-identities). Contributor
# is not needed. Checked by what the identity's roles permit, read from their role definitions, so
# Owner or a custom role counts too.
# role -> (the workspace's resource it is granted on, the permission the endpoint uses there)
ENDPOINT_ROLES = {
    "AcrPull": ("container_registry", "Microsoft.ContainerRegistry/registries/pull/read"),
    "Storage Blob Data Reader": (
        "storage_account",
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",  # a data action
    ),
    "AzureML Metrics Writer (preview)": (
        "id",
        "Microsoft.MachineLearningServices/workspaces/metrics/resource/write",
    ),
}
OPTIONAL_ROLES = {"AzureML Metrics Writer (preview)"}  # only the endpoint's metrics in the workspace need it
ROLE_API = "2022-04-01"  # REST "Role Assignments - List For Scope", "Role Definitions - Get"


def permits(definition: dict, permission: str) -> bool:
    """Whether a role definition grants `permission`: one of its patterns matches (`*` is the
    wildcard; case-insensitive) and none of the matching block's exclusions do."""
    allow, deny = ("dataActions", "notDataActions") if "/blobs/" in permission else ("actions", "notActions")

    def matches(patterns):
        return any(fnmatch.fnmatchcase(permission.lower(), p.lower()) for p in patterns)

    return any(
        matches(block.get(allow, [])) and not matches(block.get(deny, []))
        for block in definition["properties"]["permissions"]
    )


def covers(assignment_scope: str, resource: str) -> bool:
    """An assignment at a resource's own scope or at a parent of it (inherited)."""
    scope, resource = assignment_scope.rstrip("/").lower(), resource.lower()
    return scope in ("", resource) or resource.startswith(scope + "/")


def role_grants(arm, principal: str, scopes: set[str]) -> list[tuple[str, dict]]:
    """(scope, role definition) of every role assignment of `principal` at, above or below `scopes`."""
    params = {"api-version": ROLE_API, "$filter": f"principalId eq '{principal}'"}
    assignments = [
        a["properties"]
        for scope in sorted(scopes)
        for a in arm_list(arm, f"{scope}/providers/Microsoft.Authorization/roleAssignments", params)
    ]
    ids = {a["roleDefinitionId"] for a in assignments}
    definitions = {i: arm_request(arm, "GET", i, {"api-version": ROLE_API}) for i in ids}
    return [(a["scope"], definitions[a["roleDefinitionId"]]) for a in assignments]


def preflight_roles(client, endpoint_cfg, transport=None) -> list[str]:
    """Check, through ARM, that the endpoint identity may do what a deployment does with it.

    Raises DeployError listing the `az role assignment create` commands for a missing required
    role, or when ARM cannot be read; returns what was checked and notes. `transport` (an
    azure-core transport) is injectable.
    """
    if endpoint_cfg.identity_type is not IdentityType.user_assigned:
        return ["system-assigned identity: Azure assigns its roles itself (concept-endpoints-online-auth)"]
    identity_id = endpoint_cfg.user_assigned_identity_id
    workspace = client.workspaces.get(client.workspace_name)
    needed = {
        role: (getattr(workspace, attribute), permission)
        for role, (attribute, permission) in ENDPOINT_ROLES.items()
    }
    notes = [
        f"{role}: the workspace has no {ENDPOINT_ROLES[role][0]} yet; grant it on that once Azure creates it"
        for role, (scope, _) in needed.items()
        if not scope
    ]
    needed = {role: need for role, need in needed.items() if need[0]}
    group = f"/subscriptions/{client.subscription_id}/resourceGroups/{client.resource_group_name}"
    arm = arm_client(client._credential, transport)
    try:
        principal = arm_request(arm, "GET", identity_id, {"api-version": "2023-01-31"})["properties"][
            "principalId"
        ]
        # The resource group's list holds assignments above and below it; a resource elsewhere gets its own.
        grants = role_grants(
            arm, principal, {group} | {s for s, _ in needed.values() if not covers(group, s)}
        )
    except HttpResponseError as e:
        raise DeployError(
            f"role preflight for {identity_id}: ARM answered {arm_error(e)}; nothing was deployed. "
            "Fix that, or skip the check with target.preflight.roles=false"
        ) from e
    missing = {
        role: scope
        for role, (scope, permission) in needed.items()
        if not any(
            covers(granted_at, scope) and permits(definition, permission) for granted_at, definition in grants
        )
    }
    fixes = {
        role: f"  az role assignment create --assignee-object-id {principal} --assignee-principal-type "
        f'ServicePrincipal --role "{role}" --scope {scope}'
        for role, scope in missing.items()
    }
    required = [role for role in missing if role not in OPTIONAL_ROLES]
    if required:
        raise DeployError(
            f"the endpoint identity {identity_id} lacks {', '.join(required)}; nothing was deployed. "
            "Grant (then wait a few minutes):\n" + "\n".join(fixes[role] for role in required)
        )
    notes += [
        f"{role} missing (the endpoint's metrics only); grant it with:\n{fixes[role]}" for role in missing
    ]
    return [f"identity has {', '.join(role for role in needed if role not in missing)}", *notes]
