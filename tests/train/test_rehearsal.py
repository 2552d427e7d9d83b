"""rehearsal.source: the starting model's own answers, mixed into training against forgetting."""

from __future__ import annotations

import json
from pathlib import Path

from common.generation_tasks import GENERAL_KNOWLEDGE, contains
from common.paths import PROJECT_ROOT
from tests.conftest import compose_config, run_module
from train.recipe import run
from train.rehearsal import regression_answers

SMOLLM2_REHEARSAL = PROJECT_ROOT / "train" / "assets" / "smollm2_rehearsal.jsonl"


def test_the_shipped_rehearsal_never_trains_on_the_regression_set():
    """The forgetting check stays a held-out measurement: no rehearsal row holds one of its answers."""
    rows = [json.loads(line) for line in SMOLLM2_REHEARSAL.read_text(encoding="utf-8").splitlines()]
    accepted = regression_answers([str(GENERAL_KNOWLEDGE)])
    assert len(rows) >= 50 and len(accepted) >= 100
    for row in rows:
        question, answer = (m["content"] for m in row["messages"])
        assert not any(contains(f"{question} {answer}", a) for a in accepted), row


def test_rehearsal_is_mixed_in_with_its_own_held_out_rows_and_not_answered(tmp_path):
    lines = (PROJECT_ROOT / "train" / "assets" / "sample_train.jsonl").read_text().splitlines()
    rehearsal = tmp_path / "rehearsal.jsonl"
    rehearsal.write_text("\n".join(list(dict.fromkeys(lines))[:60]) + "\n")
    cfg = compose_config(
        f"rehearsal.source={rehearsal}",
        "rehearsal.weight=2",
        "sft.max_steps=2",
        "eval.generate_samples=300",  # more than the bundled test set: the rehearsal's must not be asked
        "logger.log_model=false",
        tmp=tmp_path,
    )
    metrics = run(cfg)
    assert {"eval_sample_loss", "eval_rehearsal_loss"} <= set(metrics)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    bundled_test = (PROJECT_ROOT / "train" / "assets" / "sample_test.jsonl").read_text().splitlines()
    assert summary["held_out_rows"] == summary["held_out_total"] == len(bundled_test)


def test_an_untrained_model_gives_no_rehearsal_and_says_why(tmp_path):
    """The tiny random model never stops: nothing to keep is one line, exit 2, and no file."""
    out = tmp_path / "rehearsal.jsonl"
    done = run_module(
        "train.rehearsal",
        f"rehearsal.source={out}",
        "rehearsal.max_new_tokens=2",
        f"paths.output_root={tmp_path}",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "none of" in done.stderr and "could be kept" in done.stderr
    assert not out.exists()
