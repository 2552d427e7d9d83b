"""Sweeps: an Optuna search over `conf/hparams_search/` is one MLflow parent run with a child per trial."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import QUICK_TRAIN, run_module


@pytest.mark.parametrize("search", ["lr_optuna", "lora_optuna"])
def test_search_spaces_compose_with_the_optuna_sweeper(compose_train, search):
    from hydra.core.hydra_config import HydraConfig

    compose_train(f"hparams_search={search}")
    sweeper = HydraConfig.get().sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert "sft.learning_rate" in sweeper.params


@pytest.mark.slow
def test_a_two_point_optuna_sweep_is_one_parent_run_with_two_children(tmp_path):
    result = run_module(
        "train",
        "hparams_search=lr_optuna",
        "hydra.sweeper.n_trials=2",
        *(o for o in QUICK_TRAIN if o != "logger.log_model=false"),  # points log their models
        f"paths.output_root={tmp_path}/outputs",
        unset=("MLFLOW_TRACKING_URI",),
    )
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("finetune-phi").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert len({c.data.params["sft.learning_rate"] for c in children}) == 2  # two different trials
    assert len({c.info.run_name for c in children}) == 2
    assert parent.info.status == "FINISHED" and parent.data.metrics["points"] == 2
    best = min(children, key=lambda c: c.data.metrics["eval_loss"])
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(best.data.metrics["eval_loss"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    # The sweep says which point won and how to serve it; its points register no version.
    assert f"MLflow run     {best.info.run_id}" in result.stdout
    assert f"model.uri=runs:/{best.info.run_id}/model" in result.stdout
    assert "best point     sft.learning_rate=" in result.stdout
    assert client.search_registered_models() == []
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/optimization_results.yaml", "sweep/search_space.yaml"}
