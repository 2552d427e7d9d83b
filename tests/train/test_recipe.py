"""The embedded default end to end: train, track, register, load, chat."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from common.generation_tasks import GENERAL_KNOWLEDGE, load_generation_task
from tests.conftest import compose_config
from train import tracking
from train.evaluate import split_for_generation
from train.model import ConfigError
from train.recipe import run
from train.tiny_model import MODEL_SHAPE

# Shrunk from the demo (4000 rows, 3 epochs) so the test runs in seconds; still enough
# steps at the demo's learning rate for the loss to fall by more than half.
FAST = (
    "data.max_train_rows=640",
    "data.max_eval_rows=64",
    "sft.max_steps=40",
    "sft.per_device_train_batch_size=16",
    "sft.disable_tqdm=true",
    "eval.generate_samples=8",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run of the recipe, shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("recipe")
    cfg = compose_config(*FAST, tmp=tmp)
    metrics = run(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/outputs/mlflow.db")
    return cfg, metrics, client


def test_loss_fell(trained):
    _, metrics, _ = trained
    assert metrics["train_loss_last"] < 0.5 * metrics["train_loss_first"]
    assert metrics["eval_loss"] < metrics["train_loss_first"]


def test_mlflow_run_has_params_metrics_and_artifacts(trained):
    cfg, metrics, client = trained
    run_id = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])[
        0
    ].info.run_id
    logged = client.get_run(run_id).data
    assert {"loss", "eval_loss", "learning_rate", "train_tokens_per_second"} <= set(logged.metrics)
    assert len(client.get_metric_history(run_id, "loss")) > 1  # a curve, not a point
    assert 10 < len(logged.params) <= 200  # Azure ML's limit
    # Azure ML's other limits: 10 tags here, the reserve leaves logger.tags the rest of 50; 41 metric names.
    assert len(logged.tags) < tracking.RESERVED_TAGS and len(logged.metrics) <= tracking.MAX_METRIC_NAMES
    assert set(logged.metrics) <= tracking.planned_metric_names(cfg)  # what was counted before the run
    assert logged.params["model.short_name"] == "tiny-phi3" and logged.params["sft.max_steps"] == "40"
    assert logged.tags["profile"] == "None"
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for d in ("config", "tokenizer", "eval") for a in client.list_artifacts(run_id, d)
    }
    assert {
        "config/resolved.yaml",
        "tokenizer/chat_template.jinja",
        "tokenizer/special_tokens.json",
        "tokenizer/rendering.json",
        "tokenizer/rendered.jsonl",  # the trainer's ids for held-out conversations: the parity check's input
        "loss_curve.png",
        "eval/answers.json",
    } <= artifacts


def test_model_is_registered_and_tagged(trained):
    cfg, metrics, client = trained
    (version,) = client.search_model_versions(f"name='{cfg.logger.registered_model_name}'")
    assert len(version.tags["git_sha"]) >= 7 and len(version.tags["data_hash"]) == 16
    assert float(version.tags["eval_loss"]) == pytest.approx(metrics["eval_loss"], rel=1e-4)


def test_registered_model_answers_as_the_recipe_s_own_evaluation_did(trained):
    """The model served from the registry (MLflow's chat pipeline: its own template rendering and
    generation) gives the answer the recipe's greedy evaluation recorded for the trained model."""
    cfg, _, client = trained
    experiment_id = client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id
    (run,) = client.search_runs([experiment_id])
    recorded = client.load_table(experiment_id, "eval/answers.json", run_ids=[run.info.run_id]).iloc[0]
    test_file = Path(run.data.tags["data_dir"]) / "test.jsonl"
    first = json.loads(test_file.read_text(encoding="utf-8").splitlines()[0])["messages"]
    prompt, _ = split_for_generation(first)
    assert prompt[-1]["content"] == recorded["prompt"]

    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.logger.registered_model_name}/1")
    response = model.predict({"messages": prompt, "max_tokens": cfg.eval.max_new_tokens})
    response = response[0] if isinstance(response, list) else response
    assert response["object"] == "chat.completion"
    (choice,) = response["choices"]
    assert choice["message"]["content"].strip() == recorded["answer"]
    assert choice["finish_reason"] == "stop"  # it ends its turn itself: the pad token is not a stop token


def test_answers_learn_to_stop(trained):
    """The share of held-out answers ending on a stop token, not at eval.max_new_tokens: logged and
    printed before and after training."""
    cfg, metrics, client = trained
    assert 0 <= metrics["stop_rate_before"] < metrics["stop_rate_after"]
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    assert run.data.metrics["stop_rate_after"] == metrics["stop_rate_after"]
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["metrics"]["stop_rate_after"] == metrics["stop_rate_after"]


def test_pad_token_is_no_stop_token_and_fits_a_spare_embedding_row(trained):
    from transformers import GenerationConfig

    from train.model import load_tokenizer

    cfg, _, _ = trained
    tokenizer = load_tokenizer(cfg.model)
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|endoftext|>", "<|pad|>")  # as Phi-3.5's
    stops = GenerationConfig.from_pretrained(cfg.model.name_or_path).eos_token_id
    assert tokenizer.pad_token_id not in stops and tokenizer.convert_tokens_to_ids("<|end|>") in stops
    assert tokenizer.pad_token_id == len(tokenizer) - 1 < MODEL_SHAPE["vocab_size"]  # no resize


def test_qlora_without_cuda_stops_before_loading(compose_train, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train("+profile=24gb", tmp=tmp_path)
    with pytest.raises(ConfigError, match="CUDA"):
        run(cfg)
    assert not (tmp_path / "outputs").exists()  # nothing was written, nothing downloaded


def test_a_token_budget_trains_about_that_many_tokens_and_tasks_are_asked_before_and_after(
    tmp_path, monkeypatch
):
    """token_budget sets the steps from the prepared rows' mean length; transformers counts what the
    trainer actually saw (padding excluded). Without it, 2 epochs of 640 rows would train ~10x more.
    eval.tasks: the regression set is asked before and after, its scores in the metrics and MLflow."""
    import mlflow

    mlflow.set_tracking_uri(None)  # an earlier test's store, exported to MLFLOW_TRACKING_URI by mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose_config(
        "data.max_train_rows=640",
        "data.max_eval_rows=16",
        "token_budget=4000",
        "sft.per_device_train_batch_size=16",
        "sft.include_num_input_tokens_seen=non_padding",
        "sft.disable_tqdm=true",
        "eval.generate_samples=0",
        "logger.log_model=false",
        f"eval.tasks=[{GENERAL_KNOWLEDGE}]",
        tmp=tmp_path,
    )
    metrics = run(cfg)
    assert metrics["num_input_tokens_seen"] == pytest.approx(4000, rel=0.25)

    assert metrics["general_knowledge_questions"] == len(load_generation_task(GENERAL_KNOWLEDGE).questions)
    assert {
        "general_knowledge_contains_before",
        "general_knowledge_contains_after",
        "general_knowledge_kept",
    } <= set(metrics)
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)  # where the recipe logged
    (logged,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    assert "general_knowledge_contains_after" in logged.data.metrics
    tables = {a.path for a in client.list_artifacts(logged.info.run_id, "eval")}
    assert {"eval/general_knowledge_before.json", "eval/general_knowledge_after.json"} <= tables
