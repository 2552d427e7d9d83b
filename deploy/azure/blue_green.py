"""Managed online endpoint deployment, blue/green, through azure-ai-ml entities.

`deploy()` never deletes an endpoint and never touches the live deployment:
1. register the model in the workspace (type mlflow_model) and the serving environment;
2. create the endpoint if it does not exist (an existing one is left as it is);
3. create or update the deployment that carries no traffic (`deployment.names` alternate);
4. smoke-test it with a real request (`online_endpoints.invoke(deployment_name=...)`);
5. the gate (`gate.azure`, deploy/azure/traffic_gate.py): it and the live deployment answer the same
   held-out conversations, and it must be within `gate.tolerance` of the live one;
6. only then move `traffic.new_percent` to it; the previous deployment keeps the rest.
A failure in 3, 4 or 5 leaves traffic where it was; the new deployment is kept for its logs
or deleted (`on_failure`), never the live one. Before 1, the model passes the parity check
(deploy/registry/), the gate reads its conversations and the endpoint identity's roles are
checked (deploy/azure/roles.py). The entities are deploy/azure/entities.py.

    python -m deploy target=azureml                 # blue/green to a managed online endpoint
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

from azure.core.exceptions import ResourceNotFoundError
from omegaconf import OmegaConf

from common.azure_workspace import WorkspaceSettings, ml_client
from common.payloads import Shape, parse_answer
from deploy.azure.endpoints import live_traffic
from deploy.azure.entities import deployment_entity, endpoint_entity, register_model, scoring_code_dir
from deploy.azure.environment import serving_environment
from deploy.azure.errors import DeployError
from deploy.azure.roles import preflight_roles
from deploy.azure.traffic_gate import deployment_gate
from deploy.config import OnFailure
from deploy.registry.find import ModelRef, find_model
from deploy.registry.load import load_checked_model

log = logging.getLogger(__name__)


def run_deploy(cfg, client=None) -> dict:
    """action=deploy, target=azureml: the model checked, gated and deployed blue/green to
    `target.endpoint`; `client` injects an MLClient (tests), else one is made from `target.workspace`."""
    client = client or ml_client(WorkspaceSettings.from_config(cfg.target.workspace))
    ref = find_model(
        cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=True, default_alias=cfg.gate.alias
    )
    if cfg.parity.check:
        load_checked_model(ref, cfg.tracking_uri)
    traffic_gate = deployment_gate(ref, cfg.eval, cfg.gate)  # its conversations read before anything is made
    if cfg.target.preflight.roles:
        for line in preflight_roles(client, cfg.target.endpoint):
            print(f"preflight: {line}", flush=True)
    environment = serving_environment(client, cfg.target.environment)
    result = deploy(cfg.target, client, ref, environment, cfg.tracking_uri, gate=traffic_gate)
    print(
        f"deployed {ref.uri} to {result['endpoint']}/{result['deployment']}; traffic "
        f"{result['traffic_before'] or '{}'} -> {result['traffic_after']}\n"
        f"  smoke test answer: {result['smoke_test_answer']!r}\n"
        f"  scoring URI: {result['scoring_uri']} (key: `az ml online-endpoint get-credentials -n {result['endpoint']}`"
        " or `python -m deploy target=azureml action=chat`; it is never written to a file here)"
    )
    return result


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


def deploy(target, client, ref: ModelRef, environment, tracking_uri: str, gate=None) -> dict:
    """Blue/green deploy of `ref` to `target.endpoint.name` (`target`: the azureml target config);
    returns what was done. `gate` (deploy.azure.traffic_gate.DeploymentGate) decides after the smoke
    test whether traffic may move."""
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
        state = left_after_failure(client, target, new_name, before)
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


def left_after_failure(client, target, new_name: str, before: Mapping[str, int]) -> str:
    """What a failed deployment leaves: traffic as it was, and the new deployment kept for its logs
    or deleted (`target.on_failure`); never the live one."""
    endpoint_name = target.endpoint.name
    state = f"traffic left as it was ({before or 'none'})"
    if target.on_failure is OnFailure.delete:
        try:
            client.online_deployments.begin_delete(name=new_name, endpoint_name=endpoint_name).result()
            state += f"; the failed deployment {new_name} was deleted"
        except Exception as delete_error:  # report both, keep the first cause
            state += f"; deleting {new_name} failed too ({delete_error})"
    else:
        state += f"; the failed deployment {new_name} was kept: read its logs with `az ml online-deployment get-logs -e {endpoint_name} -n {new_name}`"
    return state
