"""`python -m train` against a tracking server that answers as Azure ML's does (a real `mlflow
server` behind tests/train/azure_like_tracking.py): it trains, logs within the limits and registers
a model that deploy can load, through the code path an Azure ML job uses."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from deploy.serve.background import free_port
from tests.conftest import QUICK_TRAIN, run_module
from tests.train.azure_like_tracking import LIMITS, AzureLikeProxy, MlflowServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def azure_like(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    proxy = AzureLikeProxy(int(server.url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()
    server.stop()


def test_the_stand_in_refuses_what_azure_refuses(azure_like):
    client = MlflowClient(azure_like.url)
    experiment = client.create_experiment("limits")
    run = client.create_run(experiment).info.run_id
    with pytest.raises(MlflowException, match="404 != 200"):  # what mlflow.<flavor>.log_model calls first
        client.create_logged_model(experiment)
    for batch in range(2):  # 100 params per batch, MLflow's own cap
        client.log_batch(run, params=[mlflow.entities.Param(f"p{batch}.{i}", "v") for i in range(100)])
    with pytest.raises(MlflowException, match="FieldName=Parameters, Limit=200, Size=201"):
        client.log_param(run, "one_too_many", "v")
    for i in range(LIMITS["MetricNames"]):
        client.log_metric(run, f"m{i}", 1.0)
    with pytest.raises(MlflowException, match="FieldName=MetricNames, Limit=50, Size=51"):
        client.log_metric(run, "m50", 1.0)


def test_python_m_train_logs_and_registers_a_model_deploy_loads(azure_like, tmp_path):
    overrides = [o for o in QUICK_TRAIN if not o.startswith(("logger.log_model", "eval.generate_samples"))]
    first_request = len(azure_like.seen)
    result = run_module(
        "train",
        *overrides,
        "eval.generate_samples=2",  # the held-out exact match metrics too: every metric a run logs
        f"paths.output_root={tmp_path}",
        env={"MLFLOW_TRACKING_URI": azure_like.url},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "registered     models:/tiny-phi3-sft/1" in result.stdout
    assert ("POST", "/api/2.0/mlflow/logged-models") not in azure_like.seen[
        first_request:
    ]  # log_model's first

    client = MlflowClient(azure_like.url)
    version = client.get_model_version("tiny-phi3-sft", "1")
    run = client.get_run(version.run_id)
    assert {"loss", "eval_loss", "exact_match_after"} <= set(run.data.metrics)
    counts = azure_like.ledger.counts(version.run_id)
    assert counts["Parameters"] == len(run.data.params) and counts["MetricNames"] == len(run.data.metrics)
    assert version.tags["data_hash"] and version.tags["mlflow_run_id"] == version.run_id

    mlflow.set_tracking_uri(azure_like.url)
    try:
        model_dir = mlflow.artifacts.download_artifacts(
            "models:/tiny-phi3-sft/1", dst_path=str(tmp_path / "dl")
        )
        from deploy.scoring.score import ChatModel, Scorer

        status, answer = Scorer(ChatModel("models:/tiny-phi3-sft/1")).handle(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert (tmp_path / "dl" / "MLmodel").is_file() and model_dir
    assert status == 200 and answer["object"] == "chat.completion"
