"""method=dpo|kto: config validation, preference data checks, and real runs of TRL's trainers on the
tiny model, started from a registered model (model.uri), registered like SFT."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from tests.conftest import compose_config, register_tiny_model, run_module
from train.preference import preference_args
from train.recipe import run
from train.tiny_model import ensure_tiny_phi3


def _pairs(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Short correct sums (chosen) against long wrong ones (rejected)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        wrong = f"I think the answer is {a + b + 1}, because numbers add up."
        rows.append({"prompt": f"What is {a} plus {b}?", "chosen": str(a + b), "rejected": wrong})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_method_keys_are_checked_when_composed(compose_train):
    cfg = compose_train("method=dpo", "dpo.beta=0.3", "dpo.loss_type=[sigmoid,bco_pair]")
    assert cfg.method == "dpo" and cfg.dpo.beta == 0.3 and cfg.kto is None
    with pytest.raises(ConfigCompositionException, match="bta"):
        compose_train("method=dpo", "dpo.bta=1")
    with pytest.raises(ConfigCompositionException, match="method=dpo"):
        compose_train("dpo.beta=1")  # dpo.* without method=dpo
    with pytest.raises(ConfigCompositionException) as bad:
        compose_train("method=kto", "kto.loss_type=bad")
    assert "apo_zero_unpaired" in f"{bad.value} {bad.value.__cause__}"  # the allowed values, named
    # a shared training argument lives under sft only
    with pytest.raises(ConfigCompositionException):
        compose_train("method=dpo", "dpo.learning_rate=1")


def test_a_profile_s_training_arguments_reach_dpo(compose_train, tmp_path):
    # bf16 and the 8-bit optimizer need a GPU to build the arguments; the rest is the profile's
    cfg = compose_train(
        "+profile=a100", "method=dpo", "sft.bf16=false", "sft.optim=adamw_torch", tmp=tmp_path
    )
    args = preference_args(cfg)
    assert type(args).__name__ == "DPOConfig"
    assert args.learning_rate == cfg.sft.learning_rate == 5e-6  # the profile's, not DPOConfig's 1e-6
    assert args.per_device_train_batch_size == 4 and args.num_train_epochs == 3 and args.save_steps == 200
    assert args.max_length == 2048 and args.beta == 0.1
    kto_cfg = compose_train(
        "+profile=a100", "method=kto", "sft.bf16=false", "sft.optim=adamw_torch", tmp=tmp_path
    )
    kto = preference_args(kto_cfg)
    assert kto.train_sampling_strategy == "sequential"  # KTO's own: completions paired for its KL term


def test_a_bad_preference_row_is_named_by_file_and_line(tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl", n=4)
    lines = data.read_text().splitlines()
    lines[2] = json.dumps({"prompt": "What is 1 plus 1?", "chosen": "2"})
    data.write_text("\n".join(lines) + "\n")
    result = run_module(
        "train",
        "method=dpo",
        "data=local",
        f"data.source={data}",
        "model.demo_only=false",
        f"paths.output_root={tmp_path / 'out'}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"{data} line 3" in error and "rejected" in error


def test_kto_rows_need_a_boolean_label(tmp_path):
    data = tmp_path / "kto.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "completion": "Hello", "label": "yes"}) + "\n")
    result = run_module(
        "train",
        "method=kto",
        "data=local",
        f"data.source={data}",
        "model.demo_only=false",
        f"paths.output_root={tmp_path / 'out'}",
    )
    assert result.returncode == 2 and f"{data} line 1: label must be true or false" in result.stderr


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    """A real DPO run from a registered starting model (models:/tiny-start@champion)."""
    tmp = tmp_path_factory.mktemp("dpo")
    tracking = register_tiny_model(tmp, "tiny-start")
    client = MlflowClient(tracking_uri=tracking)
    client.set_registered_model_alias("tiny-start", "champion", "1")
    cfg = compose_config(
        "method=dpo",
        "data=local",
        "model.demo_only=false",  # the tiny model on these rows: this tests the method, not learning
        f"data.source={_pairs(tmp / 'pairs.jsonl')}",
        "model.uri=models:/tiny-start@champion",
        f"logger.tracking_uri={tracking}",
        "logger.registered_model_name=tiny-dpo",
        "sft.num_train_epochs=2",
        "sft.learning_rate=1e-3",
        "sft.per_device_train_batch_size=8",
        "sft.disable_tqdm=true",
        "eval.generate_samples=2",
        tmp=tmp,
    )
    return cfg, run(cfg), client


def test_dpo_raises_held_out_reward_accuracy_against_the_starting_model(dpo_run):
    _, metrics, _ = dpo_run
    # before: the policy is the reference, so every reward is 0 and no pair is ranked right
    assert metrics["reward_accuracy_before"] == 0 and metrics["reward_margin_before"] == 0
    assert metrics["reward_accuracy_after"] >= 0.8 and metrics["reward_margin_after"] > 0


def test_dpo_run_is_tracked_and_registered_like_sft(dpo_run):
    cfg, metrics, client = dpo_run
    version = client.get_model_version("tiny-dpo", "1")
    assert version.tags["method"] == "dpo" and version.tags["started_from"] == "models:/tiny-start/1"
    assert float(version.tags["reward_accuracy_after"]) == pytest.approx(
        metrics["reward_accuracy_after"], abs=1e-5
    )
    run_data = client.get_run(version.run_id).data
    assert run_data.params["method"] == "dpo" and run_data.params["dpo.beta"] == "0.1"
    assert run_data.params["model.uri"] == "models:/tiny-start/1"
    history = client.get_metric_history(version.run_id, "eval_rewards/accuracies")
    assert len(history) >= 3  # before training, after each of 2 epochs (and the final evaluation)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["registered_model"] == "tiny-dpo/1"
    # the held-out answers before and after training are kept, so the exact match can be read back
    for name, when in (("answers_before", "before"), ("answers", "after")):
        experiment = client.get_run(version.run_id).info.experiment_id
        table = client.load_table(experiment, f"eval/{name}.json", run_ids=[version.run_id])
        assert (
            len(table) == 2
            and (table["answer"] == table["reference"]).mean() == metrics[f"exact_match_{when}"]
        )


def test_kto_trains_on_pairs_unpaired(tmp_path):
    pairs = _pairs(tmp_path / "pairs.jsonl", n=24)
    cfg = compose_config(
        "method=kto",
        "data=local",
        "model.demo_only=false",  # the tiny model on these rows: this tests the method, not learning
        f"data.source={pairs}",
        "sft.max_length=null",  # kto.max_length follows it: from the data, the longest sequence
        "sft.max_steps=3",
        "sft.per_device_train_batch_size=8",
        "sft.learning_rate=1e-3",
        "sft.disable_tqdm=true",
        "logger.log_model=false",
        tmp=tmp_path,
    )
    metrics = run(cfg)
    assert metrics["reward_margin_after"] > metrics["reward_margin_before"] == 0
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_phi3())
    longest = max(
        len(tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[answer]}],
            tokenize=True, return_dict=False,
        ))
        for row in map(json.loads, pairs.read_text().splitlines())
        for answer in ("chosen", "rejected")
    )  # fmt: skip
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["max_length"].startswith(f"{longest} tokens, from the data")
