"""The recipe's data path: local sources are validated and normalised before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.data import load_splits
from train.prepare import DataError

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_sharegpt_file_trains_as_messages_with_the_prepared_files_kept(compose_train, tmp_path):
    sharegpt = SHARED_DATA / "sharegpt_dummy_conversation.json"
    if not sharegpt.exists():
        pytest.skip(f"third-party sample data not found at {SHARED_DATA}")
    cfg = compose_train(f"data.train_files={sharegpt}", "data.eval_files=null", "data.test_size=0.1")
    splits = load_splits(cfg.data, cfg.model, cfg.seed, tmp_path / "data")
    assert (len(splits["train"]), len(splits["test"])) == (450, 50)
    first = splits["train"][0]["messages"]
    assert first[0] == {"role": "system", "content": ""}  # seed A's empty system turn
    assert {m["role"] for m in first[1:]} <= {"user", "assistant"}
    assert json.loads((tmp_path / "data" / "stats.json").read_text())["formats"] == {"sharegpt": 500}


def test_a_bad_row_stops_before_training_naming_file_and_line(compose_train, tmp_path):
    bad = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(
        json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n"
    )
    cfg = compose_train(f"data.train_files={bad}", "data.eval_files=null")
    with pytest.raises(DataError, match=r"chats\.jsonl line 2: .*assistant"):
        load_splits(cfg.data, cfg.model, cfg.seed, tmp_path / "data")


def test_skip_mode_trains_on_the_rest_and_lists_rejects(compose_train, tmp_path):
    src = tmp_path / "chats.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    src.write_text("\n".join([json.dumps(good)] * 4 + ["{not json"]) + "\n")
    cfg = compose_train(f"data.train_files={src}", "data.eval_files=null", "data.on_error=skip")
    splits = load_splits(cfg.data, cfg.model, cfg.seed, tmp_path / "data")
    assert len(splits["train"]) + len(splits["test"]) == 4
    (reject,) = (tmp_path / "data" / "rejects.jsonl").read_text().splitlines()
    assert json.loads(reject)["line"] == 5


def test_several_paths_are_refused_with_the_key_named(compose_train, tmp_path):
    cfg = compose_train("data.train_files=[a.jsonl,b.jsonl]")
    with pytest.raises(ValueError, match="data.train_files"):
        load_splits(cfg.data, cfg.model, cfg.seed, tmp_path / "data")
