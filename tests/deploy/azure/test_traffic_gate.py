"""The blue/green gate through azure-ai-ml's real `online_endpoints.invoke` on a stub wire, with real
scoring scripts of registered models behind the two deployments: traffic moves only when the new
deployment answers the gate set as well as the live one."""

from __future__ import annotations

import mlflow
import pytest
from azure.ai.ml import MLClient
from mlflow.tracking import MlflowClient

from deploy import __main__ as cli
from deploy.azure.errors import DeployError
from deploy.scoring.score import ChatModel, Scorer
from tests.deploy.azure.azure_stub import StubWorkspaceTransport
from tests.deploy.azure.test_blue_green import IDENTITY, Workspace
from tests.deploy.conftest import compose_deploy
from tests.deploy.evaluate.test_evaluate import write_set
from tests.fake_arm import FakeCredential


def scorer_of(tracking_uri: str, model_uri: str):
    """A deployment's /score: the scoring script's Scorer of that model (body -> status, body)."""
    mlflow.set_tracking_uri(tracking_uri)
    return Scorer(ChatModel(model_uri)).handle


def gated_deploy(tracking_uri: str, traffic: dict, deployments: dict, *overrides: str):
    """`python -m deploy target=azureml` with the workspace's operations faked at the boundary, except
    invoke, which is azure-ai-ml's own over the stub transport. Returns (workspace, transport, outcome)."""
    workspace = Workspace(endpoint_traffic=traffic)
    transport = StubWorkspaceTransport("finetune-phi", deployments)
    # retry_total=0: azure-core would retry a 5xx three times with backoff; a failed row is what counts here.
    wire = MLClient(FakeCredential(), "0000", "rg", "ws", transport=transport, retry_total=0)
    workspace.endpoint_ops.invoke = wire.online_endpoints.invoke
    cfg = compose_deploy(
        "target=azureml",
        f"target.endpoint.user_assigned_identity_id={IDENTITY}",
        "target.preflight.roles=false",
        "parity.check=false",
        f"tracking_uri={tracking_uri}",
        *overrides,
    )
    try:
        outcome = cli.run(cfg, client=workspace.client())
    except DeployError as e:
        outcome = e
    return workspace, transport, outcome


def traffic_updates(workspace) -> list[dict]:
    return [e[2] for e in workspace.events if e[0] == "endpoint.create_or_update"]


def gate_runs(tracking_uri: str, training_run_id: str) -> dict:
    client = MlflowClient(tracking_uri)
    experiment = client.get_run(training_run_id).info.experiment_id
    newest = {}
    for run in client.search_runs(
        [experiment], "tags.`eval.role` != ''", order_by=["attributes.start_time DESC"]
    ):
        newest.setdefault(run.data.tags["eval.role"], run)
    return newest


def test_a_deployment_failing_requests_keeps_the_traffic_and_every_row(registered, tmp_path):
    """The new deployment answers 503 to every other request (a deployment whose instances are not
    ready: Azure's documented 503); the failures are rows of the gate set, so it fails on error_rate."""
    live = scorer_of(registered.tracking_uri, registered.uri)
    calls = []

    def flaky(body):
        calls.append(body)
        if len(calls) % 2 == 0:
            return 503, {"message": "upstream connect error or disconnect/reset before headers"}
        return live(body)

    source = write_set(tmp_path / "set.jsonl", rows=5)  # 5 answerable + 1 every scoring script refuses
    workspace, transport, outcome = gated_deploy(
        registered.tracking_uri,
        {"blue": 100},
        {"blue": live, "green": flaky},
        "model.version=1",
        f"eval.source={source}",
        "eval.max_new_tokens=4",
    )
    assert isinstance(outcome, DeployError)
    assert "the gate failed on empty_rate, error_rate against blue" in str(outcome)
    assert "traffic left as it was ({'blue': 100})" in str(outcome)
    assert traffic_updates(workspace) == []
    assert workspace.endpoints["finetune-phi"].traffic == {"blue": 100}
    assert transport.scored == ["green"] + ["green"] * 6 + ["blue"] * 6  # smoke test, then the gate set

    runs = gate_runs(registered.tracking_uri, registered.run_id)
    new, old = runs["new"], runs["live"]
    assert (new.data.tags["eval.deployment"], old.data.tags["eval.deployment"]) == ("green", "blue")
    assert new.data.tags["eval.model_version"] == "1" and "eval.model_version" not in old.data.tags
    assert new.data.tags["gate.verdict"] == "failed on empty_rate, error_rate"
    client = MlflowClient(registered.tracking_uri)
    table = client.load_table(new.info.experiment_id, "eval/answers.json", run_ids=[new.info.run_id])
    assert len(table) == 6 and table["error"].notna().sum() == 4  # 3 answered 503, 1 refused by both
    assert new.data.metrics["error_rate"] == pytest.approx(4 / 6) and old.data.metrics[
        "error_rate"
    ] == pytest.approx(1 / 6)
    comparison = mlflow.artifacts.load_text(f"{new.info.artifact_uri}/gate/comparison.txt")
    assert "error_rate" in comparison and "FAIL" in comparison


def test_the_gate_needs_its_conversations_before_anything_is_created(tmp_path):
    workspace = Workspace(endpoint_traffic={"blue": 100})
    cfg = compose_deploy(
        "target=azureml",
        f"target.endpoint.user_assigned_identity_id={IDENTITY}",
        "model.uri=/models/elsewhere",
        "parity.check=false",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
    )
    with pytest.raises(DeployError, match=r"no conversations: .*eval.source=FILE.jsonl.*gate.azure=false"):
        cli.run(cfg, client=workspace.client())
    assert workspace.events == []


@pytest.mark.slow
def test_a_worse_model_never_gets_traffic_and_a_better_one_does(trained_pair):
    """v1: the demo's training; v2: 2 steps (answers nothing). Deployed beside each other."""
    trained = scorer_of(trained_pair.tracking_uri, f"models:/{trained_pair.name}/1")
    two_steps = scorer_of(trained_pair.tracking_uri, f"models:/{trained_pair.name}/2")

    workspace, transport, outcome = gated_deploy(
        trained_pair.tracking_uri, {"blue": 100}, {"blue": trained, "green": two_steps}, "model.version=2"
    )
    assert isinstance(outcome, DeployError), outcome
    assert "the gate failed on" in str(outcome) and "empty_rate" in str(outcome)
    assert traffic_updates(workspace) == [] and workspace.endpoints["finetune-phi"].traffic == {"blue": 100}
    assert (
        transport.scored.count("green") == 1 + 32 and transport.scored.count("blue") == 32
    )  # gate.azure_rows

    workspace, transport, outcome = gated_deploy(
        trained_pair.tracking_uri, {"green": 100}, {"blue": trained, "green": two_steps}, "model.version=1"
    )
    assert outcome["deployment"] == "blue" and outcome["traffic_after"] == {"blue": 100, "green": 0}
    assert traffic_updates(workspace) == [{"blue": 100, "green": 0}]
    runs = gate_runs(
        trained_pair.tracking_uri,
        MlflowClient(trained_pair.tracking_uri).get_model_version(trained_pair.name, "1").run_id,
    )
    assert runs["new"].data.tags["gate.verdict"] == "passed"
