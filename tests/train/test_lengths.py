"""`sft.max_length: null`: rows kept up to the model's context, training at the longest kept row,
through the real commands (`python -m train.prepare`, `python -m train`) on the tiny model, whose
context is 512 tokens; the expected lengths come from the tokenizer's own chat template."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tests.conftest import QUICK_TRAIN, run_module
from train.tiny_model import MODEL_SHAPE, ensure_tiny_phi3

pytestmark = pytest.mark.slow

CONTEXT = MODEL_SHAPE["max_position_embeddings"]  # the tiny model's: 512
WORDS = ["amber", "river", "coral", "silver", "peach", "olive", "lemon", "glacier", "lantern", "cherry"]


def conversation(words: int, seed: int) -> list[dict]:
    text = " ".join(WORDS[(seed + i) % len(WORDS)] for i in range(words))
    return [{"role": "user", "content": f"Repeat: {text}"}, {"role": "assistant", "content": text}]


def template_length(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))


@pytest.fixture(scope="module")
def long_rows(tmp_path_factory) -> tuple[Path, list[int]]:
    """ShareGPT rows, some past the demo's 128 tokens, all within the context; their lengths."""
    rows = [conversation(words, seed) for seed, words in enumerate([3, 5, 8, 40, 70, 90, 4, 6, 7, 9])]
    path = tmp_path_factory.mktemp("long") / "long_chats.json"
    sharegpt = [
        {
            "conversations": [
                {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in r
            ]
        }
        for r in rows
    ]
    path.write_text(json.dumps(sharegpt), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_phi3())
    lengths = [template_length(tokenizer, r) for r in rows]
    assert max(lengths) > 128 and max(lengths) < CONTEXT  # the rows this test needs
    return path, lengths


def prepare_cli(source: Path, tmp_path: Path, *overrides: str):
    out = tmp_path / "prepared"
    result = run_module(
        "train.prepare",
        f"data.source={source}",
        f"data.output_dir={out}",
        f"paths.output_root={tmp_path}/outputs",
        "model.demo_only=false",  # the tiny model stands in for a real one: lengths only
        *overrides,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads((out / "stats.json").read_text())


def test_from_the_data_keeps_every_row_whole_and_trains_at_the_longest(long_rows, tmp_path):
    source, lengths = long_rows
    stdout, stats = prepare_cli(source, tmp_path, "sft.max_length=null")
    assert (stats["max_length"], stats["over_max_length"], stats["kept"]) == (CONTEXT, 0, len(lengths))
    assert stats["tokens"]["max"] == max(lengths)
    (line,) = [line for line in stdout.splitlines() if line.strip().startswith("max_length")]
    assert f"{max(lengths)} tokens, from the data: the longest kept row" in line
    assert f"rows kept up to {CONTEXT} tokens, the model's context" in line


def test_a_number_still_caps_and_says_how_to_keep_the_rows_whole(long_rows, tmp_path):
    source, lengths = long_rows
    stdout, stats = prepare_cli(source, tmp_path, "sft.max_length=128")
    longer = sum(n > 128 for n in lengths)
    assert (stats["max_length"], stats["over_max_length"]) == (128, longer)
    assert stats["tokens"]["max"] <= 128
    assert f"{longer} of {len(lengths)} conversations were longer than max_length" in stdout
    assert "sft.max_length=null to take it from the data" in stdout


def test_rows_past_the_model_s_context_meet_the_length_policy(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_phi3())
    rows = [conversation(4, 0), conversation(6, 1), conversation(300, 2)]
    assert template_length(tokenizer, rows[2]) > CONTEXT
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
    stdout, stats = prepare_cli(source, tmp_path, "sft.max_length=null", "data.length_policy=drop")
    assert (stats["over_max_length"], stats["dropped_too_long"], stats["kept"]) == (1, 1, 2)
    assert f"1 of 3 conversations were longer than {CONTEXT} tokens, the model's context" in stdout


def test_training_takes_the_longest_row_even_packed(long_rows, tmp_path):
    """TRL refuses packing without a max_length; from the data it gets the longest kept row."""
    source, lengths = long_rows
    result = run_module(
        "train",
        f"data.source={source}",
        "model.demo_only=false",
        "sft.max_length=null",
        "sft.packing=true",
        *QUICK_TRAIN,
        f"paths.output_root={tmp_path}/outputs",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf"max_length +{max(lengths)} tokens, from the data", result.stdout)
    (summary,) = (tmp_path / "outputs").rglob("summary.json")
    assert json.loads(summary.read_text())["max_length"].startswith(f"{max(lengths)} tokens, from the data")
