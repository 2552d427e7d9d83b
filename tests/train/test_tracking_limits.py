"""What a run logs stays within Azure ML's tracking limits (params, tags, metric names), and a
config that would break one stops with a message naming it, before the server refuses it."""

from __future__ import annotations

import mlflow
import pytest
from omegaconf import OmegaConf, open_dict
from transformers import TrainerControl, TrainerState

from tests.conftest import QUICK_TRAIN, run_module
from train import tracking
from train.recipe import run, sft_defaults


def test_too_many_params_stop_before_anything_is_logged(compose_train, tmp_path):
    cfg = compose_train(tmp=tmp_path)
    params = tracking.flatten_params(cfg, sft_defaults())
    grown = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # past the schema: 150 more keys
    grown.eval.update({f"added_{i}": i for i in range(150)})
    with pytest.raises(
        tracking.TrackingLimitError, match=rf"{len(params) + 150} params exceed Azure ML's limit of 200"
    ):
        tracking.flatten_params(grown, sft_defaults())
    with pytest.raises(tracking.TrackingLimitError, match="params exceed"):
        run(grown)  # the recipe checks before it loads, trains or logs anything
    assert not (tmp_path / "outputs").exists()  # no run folder, no tracking store


@pytest.mark.slow
def test_an_overrides_tag_over_1000_characters_stops_the_command_before_anything_is_logged(tmp_path):
    result = run_module(
        "train", f"logger.run_name={'x' * 1000}", *QUICK_TRAIN, f"paths.output_root={tmp_path}/outputs"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "hydra.overrides tag would be" in line and "over Azure ML's 1000 per tag value" in line
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_metric_names_logged_after_training_count_before_the_run(compose_train, tmp_path, monkeypatch):
    cfg = compose_train("eval.generate_samples=4", tmp=tmp_path)
    planned = tracking.planned_metric_names(cfg)
    assert {"exact_match_after", "stop_rate_after", "train_loss_last", "data_rows_read"} <= planned
    # A few more names from the trainer (a new TRL version, say) and the run would pass the limit.
    monkeypatch.setattr(
        tracking,
        "TRAINER_METRICS",
        (*tracking.TRAINER_METRICS, *[f"new_{i}" for i in range(51 - len(planned))]),
    )
    with pytest.raises(tracking.TrackingLimitError, match=r"51 metric names, over Azure ML's limit of 50"):
        run(cfg)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({f"team{i}": "x" for i in range(31)}, r"logger.tags has 31 tags; .* at most 30 here"),
        ({"k" * 101: "x"}, r"logger.tags.k+: Azure ML takes tag keys up to 100 .*this key has 101"),
        ({"note": "x" * 1001}, r"values up to 1000 .*its value 1001"),
    ],
)
def test_configured_tags_over_azure_limits_stop_before_the_run_starts(compose_train, tmp_path, tags, message):
    cfg = compose_train(tmp=tmp_path)
    with open_dict(cfg):
        cfg.logger.tags = tags
    with pytest.raises(tracking.TrackingLimitError, match=message):
        tracking.start_experiment(cfg.logger, tmp_path / "artifacts")
    assert not (tmp_path / "outputs").exists()  # no store was created


def test_the_51st_metric_name_stops_with_the_names_not_a_refused_batch(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    callback, state = tracking.MetricsOnlyMLflowCallback(), TrainerState(global_step=7)
    try:
        with mlflow.start_run(experiment_id=mlflow.create_experiment("limits")) as run:
            mlflow.log_metrics({f"data_{i}": 1.0 for i in range(10)})  # logged before training
            callback.on_log(None, state, TrainerControl(), {f"m{i}": 0.5 for i in range(39)} | {"epoch": 1})
            with pytest.raises(tracking.TrackingLimitError, match=r"51 metric names.*step 7: \['m39'\]"):
                callback.on_log(None, state, TrainerControl(), {"m39": 0.5, "m0": 0.4})
        mlflow.flush_async_logging()
        logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(None)
    assert len(logged) == 50 and "m39" not in logged
