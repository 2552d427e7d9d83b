"""Azure target offline: real azure-ai-ml entities (dumped YAML loads back with the SDK), a real
MLClient with a fake credential and its operations replaced at the boundary, asserting the
blue/green order and that nothing is deleted unless asked."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from azure.ai.ml import MLClient
from azure.ai.ml.entities import Model
from azure.core.exceptions import ResourceNotFoundError

from deploy import __main__ as cli
from deploy.azure import blue_green, entities
from deploy.azure import environment as environment_module
from deploy.azure.errors import DeployError
from deploy.registry.find import ModelRef
from tests.deploy.conftest import compose_deploy
from tests.fake_arm import FakeCredential

IDENTITY = (
    "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/phi-uai"
)
JOB_MODEL = ModelRef(
    uri="azureml://jobs/job-1/outputs/artifacts/paths/model/", name="tiny-phi3-sft", azureml_job="job-1"
)
COMPLETION = {
    "object": "chat.completion",
    "choices": [{"message": {"role": "assistant", "content": "hello"}}],
}


def deploy_config(*overrides: str):
    return compose_deploy(
        "target=azureml", f"target.endpoint.user_assigned_identity_id={IDENTITY}", *overrides
    )


class Done:
    def __init__(self, value=None):
        self.value = value

    def result(self):
        return self.value


class Workspace:
    """The operations MLClient would call over HTTP, recording every call in `events`."""

    def __init__(self, endpoint_traffic=None, deployment_fails=False, smoke_fails=False):
        self.events: list[tuple] = []
        self.endpoints: dict = {}
        if endpoint_traffic is not None:
            endpoint = entities.endpoint_entity(deploy_config().target.endpoint)
            endpoint.traffic = dict(endpoint_traffic)
            self.endpoints[endpoint.name] = endpoint
        self.deployment_fails, self.smoke_fails = deployment_fails, smoke_fails
        outer = self

        class Endpoints:
            def get(self, name):
                outer.events.append(("endpoint.get", name))
                if name not in outer.endpoints:
                    raise ResourceNotFoundError(f"endpoint {name} not found")
                return copy.deepcopy(outer.endpoints[name])

            def begin_create_or_update(self, endpoint):
                endpoint._to_rest_online_endpoint("westeurope")  # the SDK's own serialisation
                outer.events.append(
                    ("endpoint.create_or_update", endpoint.name, dict(endpoint.traffic or {}))
                )
                outer.endpoints[endpoint.name] = copy.deepcopy(endpoint)
                return Done(endpoint)

            def invoke(self, endpoint_name, request_file=None, deployment_name=None, **kwargs):
                payload = json.loads(Path(request_file).read_text())
                outer.events.append(("endpoint.invoke", deployment_name, payload))
                if outer.smoke_fails:
                    return json.dumps({"error": "model failed to load"})
                return json.dumps(COMPLETION)

            def begin_delete(self, name):
                outer.events.append(("endpoint.delete", name))
                return Done()

            def list(self):
                return list(outer.endpoints.values())

        class Deployments:
            def begin_create_or_update(self, deployment):
                outer.events.append(("deployment.create_or_update", deployment.name))
                if outer.deployment_fails:
                    raise RuntimeError("ResourceNotReady: container crashed")
                return Done(deployment)

            def begin_delete(self, name, endpoint_name):
                outer.events.append(("deployment.delete", name))
                return Done()

            def list(self, endpoint_name):
                return []

        class Models:
            def create_or_update(self, model):
                outer.events.append(("model.create_or_update", model.name, model.type, model.path))
                registered = copy.deepcopy(model)
                registered.version = "1"
                return registered

        class Environments:
            def get(self, name, version=None):
                raise ResourceNotFoundError(f"environment {name}:{version} not found")

            def create_or_update(self, environment):
                outer.events.append(
                    ("environment.create_or_update", environment.name, environment.build.path)
                )
                return environment

        self.endpoint_ops, self.deployment_ops, self.model_ops = Endpoints(), Deployments(), Models()
        self.environment_ops = Environments()

    def client(self) -> MLClient:
        client = MLClient(FakeCredential(), "0000", "rg", "ws")
        client._online_endpoints = self.endpoint_ops
        client._online_deployments = self.deployment_ops
        client._models = self.model_ops
        client._environments = self.environment_ops
        return client

    def names(self):
        return [e[0] for e in self.events]


def run_deploy(workspace, *overrides):
    cfg = deploy_config(*overrides)
    return blue_green.deploy(
        cfg.target, workspace.client(), JOB_MODEL, "azureml:finetune-phi-serve:1", cfg.tracking_uri
    )


def test_entities_as_azure_receives_them(tmp_path):
    """The ARM request bodies azure-ai-ml builds from our entities (its own serialisation)."""
    cfg = deploy_config(
        "target.deployment.instance_type=Standard_NC24ads_A100_v4", "target.deployment.instance_count=2"
    )
    endpoint = entities.endpoint_entity(cfg.target.endpoint)._to_rest_online_endpoint("westeurope")
    assert (endpoint.properties.auth_mode, endpoint.identity.type) == ("Key", "UserAssigned")
    assert list(endpoint.identity.user_assigned_identities) == [IDENTITY]

    code_dir = entities.scoring_code_dir(tmp_path / "code")
    deployment = entities.deployment_entity(
        cfg.target.deployment,
        "finetune-phi",
        "blue",
        "azureml:tiny-phi3-sft:1",
        "azureml:finetune-phi-serve:1",
        code_dir,
    )
    body = deployment._to_rest_object(location="westeurope").as_dict()
    assert body["sku"] == {"name": "Default", "capacity": 2}
    properties = body["properties"]
    assert properties["instanceType"] == "Standard_NC24ads_A100_v4"
    assert properties["requestSettings"] == {
        "requestTimeout": "PT1M30S",
        "maxConcurrentRequestsPerInstance": 1,
        "maxQueueWait": "PT1M",
    }
    assert properties["livenessProbe"]["initialDelay"] == "PT10M"
    assert properties["readinessProbe"]["failureThreshold"] == 30
    assert properties["codeConfiguration"]["scoringScript"] == "score.py"
    # The snapshot carries what score.py imports from this project: the neutral contract modules.
    assert sorted(p.relative_to(code_dir).as_posix() for p in code_dir.rglob("*.py")) == [
        "common/__init__.py",
        "common/generation.py",
        "common/payloads.py",
        "common/rendering.py",
        "score.py",
    ]

    model = entities.model_entity(JOB_MODEL, "tiny-phi3-sft")
    assert (model.type, model.path) == ("mlflow_model", JOB_MODEL.uri)

    system = entities.endpoint_entity(
        deploy_config("target.endpoint.identity_type=system_assigned").target.endpoint
    )
    assert system.identity.type == "system_assigned"
    with pytest.raises(DeployError, match="AZURE_MANAGED_IDENTITY_RESOURCE_ID"):
        entities.endpoint_entity(
            deploy_config("target.endpoint.user_assigned_identity_id=null").target.endpoint
        )


def test_first_deploy_creates_endpoint_then_blue_then_tests_then_sends_traffic():
    workspace = Workspace()
    result = run_deploy(workspace)
    assert workspace.names() == [
        "model.create_or_update",
        "endpoint.get",
        "endpoint.create_or_update",
        "deployment.create_or_update",
        "endpoint.invoke",
        "endpoint.get",
        "endpoint.create_or_update",
    ]
    assert workspace.events[0][2:] == ("mlflow_model", JOB_MODEL.uri)
    assert workspace.events[2][2] == {}  # the new endpoint carries no traffic until the test passed
    assert workspace.events[4][1] == "blue"
    assert workspace.events[-1][2] == {"blue": 100}
    assert result["smoke_test_answer"] == "hello"


def test_redeploy_goes_green_beside_blue_and_keeps_it():
    workspace = Workspace(endpoint_traffic={"blue": 100})
    result = run_deploy(workspace, "target.traffic.new_percent=10")
    assert (
        "endpoint.create_or_update",
        "finetune-phi",
        {},
    ) not in workspace.events  # endpoint left as it was
    assert [e for e in workspace.events if e[0] == "deployment.create_or_update"] == [
        ("deployment.create_or_update", "green")
    ]
    assert workspace.names().index("endpoint.invoke") < workspace.names().index("endpoint.create_or_update")
    assert result["traffic_after"] == {"green": 10, "blue": 90}
    assert not [e for e in workspace.events if e[0].endswith("delete")]


def test_failed_smoke_test_leaves_traffic_and_the_live_deployment_alone():
    workspace = Workspace(endpoint_traffic={"green": 100}, smoke_fails=True)
    with pytest.raises(
        DeployError, match=r"not a chat completion.*traffic left as it was \(\{'green': 100\}\)"
    ):
        run_deploy(workspace)
    assert [e for e in workspace.events if e[0] == "endpoint.create_or_update"] == []
    assert not [e for e in workspace.events if e[0].endswith("delete")]
    assert workspace.endpoints["finetune-phi"].traffic == {"green": 100}


def test_failed_deployment_is_deleted_only_when_asked_and_never_the_live_one():
    workspace = Workspace(endpoint_traffic={"blue": 100}, deployment_fails=True)
    with pytest.raises(DeployError, match="container crashed.*was deleted"):
        run_deploy(workspace, "target.on_failure=delete")
    assert [e for e in workspace.events if e[0].endswith("delete")] == [("deployment.delete", "green")]
    assert "endpoint.invoke" not in workspace.names()
    assert workspace.endpoints["finetune-phi"].traffic == {"blue": 100}


def test_no_idle_deployment_name_means_no_deploy():
    workspace = Workspace(endpoint_traffic={"blue": 50, "green": 50})
    with pytest.raises(DeployError, match="every deployment name"):
        run_deploy(workspace)
    assert "deployment.create_or_update" not in workspace.names()


def test_traffic_split_keeps_proportions():
    assert blue_green.traffic_after({}, "blue", 10) == {"blue": 100}
    assert blue_green.traffic_after({"blue": 100}, "green", 100) == {"green": 100, "blue": 0}
    assert blue_green.traffic_after({"blue": 70, "green": 30}, "red", 50) == {
        "red": 50,
        "blue": 35,
        "green": 15,
    }


def test_teardown_needs_the_endpoint_name_repeated():
    workspace = Workspace(endpoint_traffic={"blue": 100})
    for confirm in (None, "yes", "other-endpoint"):
        cfg = deploy_config(
            "action=teardown", f"target.teardown.confirm={confirm}" if confirm else "action=teardown"
        )
        with pytest.raises(DeployError, match="target.teardown.confirm=finetune-phi"):
            cli.run(cfg, client=workspace.client())
    assert not [e for e in workspace.events if e[0].endswith("delete")]
    with pytest.raises(DeployError, match="carries 100%"):
        cli.run(
            deploy_config("action=teardown", "target.teardown.deployment=blue"), client=workspace.client()
        )
    cli.run(
        deploy_config("action=teardown", "target.teardown.confirm=finetune-phi"), client=workspace.client()
    )
    assert [e for e in workspace.events if e[0].endswith("delete")] == [("endpoint.delete", "finetune-phi")]


def test_status_lists_endpoints_deployments_and_traffic(capsys):
    workspace = Workspace(endpoint_traffic={"blue": 80, "green": 20})
    rows = cli.run(deploy_config("action=status"), client=workspace.client())
    assert rows[0]["endpoint"] == "finetune-phi" and rows[0]["traffic"] == {"blue": 80, "green": 20}
    assert "finetune-phi" in capsys.readouterr().out


def test_model_from_a_local_registry_is_uploaded_as_an_mlflow_model(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda uri, dst_path: str(tmp_path))
    workspace = Workspace()
    ref = ModelRef(uri="models:/tiny-phi3-sft/3", name="tiny-phi3-sft", version="3")
    model = entities.register_model(workspace.client(), ref, "tiny-phi3-sft", "sqlite:///x.db")
    assert isinstance(model, Model) and workspace.events == [
        ("model.create_or_update", "tiny-phi3-sft", "mlflow_model", str(tmp_path))
    ]


def test_cli_deploy_builds_the_serving_environment_from_the_generated_spec(capsys):
    workspace = Workspace(endpoint_traffic={"blue": 100})
    cfg = deploy_config(
        "model.azureml_job=job-7", "parity.check=false", "target.preflight.roles=false", "gate.azure=false"
    )  # the gate: tests/deploy/azure/test_traffic_gate.py
    result = cli.run(cfg, client=workspace.client())
    environment = next(e for e in workspace.events if e[0] == "environment.create_or_update")
    context = Path(environment[2])
    assert (context / "serve.requirements.txt").read_text() == environment_module.serving_requirements()
    assert "FROM " in (context / "Dockerfile").read_text()
    model = next(e for e in workspace.events if e[0] == "model.create_or_update")
    assert model[3] == "azureml://jobs/job-7/outputs/artifacts/paths/model/"
    assert result["deployment"] == "green" and result["traffic_after"] == {"green": 100, "blue": 0}
    out = capsys.readouterr().out
    assert "scoring URI" in out and "key" in out
