"""data.sources: a weighted mixture, split per source before weighting, eval loss per source."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from common.paths import PROJECT_ROOT
from tests.conftest import compose_config
from train.recipe import run


def _two_sources(tmp: Path) -> tuple[Path, Path]:
    lines = (PROJECT_ROOT / "train" / "assets" / "sample_train.jsonl").read_text().splitlines()
    lines = list(dict.fromkeys(lines))  # distinct conversations: a repeat would sit on both sides
    a, b = tmp / "a.jsonl", tmp / "b.jsonl"
    a.write_text("\n".join(lines[:200]) + "\n")
    b.write_text("\n".join(lines[200:260]) + "\n")
    return a, b


def test_sources_are_split_before_weighting_and_evaluated_one_by_one(tmp_path):
    a, b = _two_sources(tmp_path)
    cfg = compose_config(
        "data=mixture",
        "model.demo_only=false",  # the tiny model on these rows: this tests the mixture, not learning
        f"data.sources.0.source={a}",
        "data.sources.0.weight=0.5",
        f"data.sources.1.source={b}",
        "data.sources.1.weight=2.5",
        "sft.max_length=null",  # from the data: the longest row of either source
        "sft.max_steps=2",
        "sft.disable_tqdm=true",
        "logger.log_model=false",
        tmp=tmp_path,
    )
    metrics = run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    logged = client.get_run(record["run_id"]).data.metrics
    assert {"eval_general_loss", "eval_domain_loss"} <= set(logged)
    losses = (metrics["eval_general_loss"], metrics["eval_domain_loss"])
    assert min(losses) <= metrics["eval_loss"] <= max(losses)  # their mean, weighted by held-out rows
    stats_dir = Path(client.download_artifacts(record["run_id"], "data", str(tmp_path / "dl")))
    shares = json.loads((stats_dir / "stats.json").read_text())["mixture"]
    general, domain = shares["general"], shares["domain"]
    assert (
        general["rows_before"] + general["test_rows"] == 200
        and domain["rows_before"] + domain["test_rows"] == 60
    )
    assert general["rows"] == round(0.5 * general["rows_before"])  # a random half
    assert domain["rows"] == 2 * domain["rows_before"] + round(
        0.5 * domain["rows_before"]
    )  # 2 copies + a half
    assert logged["data_domain_rows"] == domain["rows"] and logged["data_general_trained_tokens"] > 0
    held_out = [json.loads(line) for line in (stats_dir / "test.jsonl").read_text().splitlines()]
    assert len(held_out) == general["test_rows"] + domain["test_rows"]  # unweighted, never copied
    trained = {json.dumps(m) for m in _trained_messages(cfg, shares)}
    assert not any(json.dumps(row["messages"]) in trained for row in held_out)
    longest = max(
        len(ids)
        for share in shares.values()
        for split in ("train", "test")
        for ids in pq.read_table(Path(share["prepared"]) / f"{split}.tokens.parquet")["input_ids"].to_pylist()
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["max_length"].startswith(f"{longest} tokens, from the data")


def _trained_messages(cfg, shares) -> list:
    rows = []
    for share in shares.values():
        with open(Path(share["prepared"]) / "train.jsonl", encoding="utf-8") as f:
            rows += [json.loads(line)["messages"] for line in f]
    return rows
