"""One rendering for training and serving (common/rendering.py): for every chat family, the ids the
trainer receives for a conversation start with the ids the server renders for the same messages, and
the loss starts right there. Training's side is data preparation (the real pipeline, the ids it
writes for the trainer); serving's side is the tokenizer as saved with the model, through the
scoring code's renderer."""

from __future__ import annotations

import json
from datetime import date

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from common.generation import Generator
from common.rendering import fix_changing_inputs, fixed_inputs
from tests.train.test_templates import GGUF, prepared
from train.prepare.tokens import IGNORE_INDEX

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "What kind of thing is crimson?"},
            {"role": "assistant", "content": "A colour."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Which day comes after Monday?"},
            {"role": "assistant", "content": "Tuesday"},
            {"role": "user", "content": "And after that?"},
            {"role": "assistant", "content": "Wednesday"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Ünïcödé — 日本語? 🙂"},
            {"role": "assistant", "content": " Ja ✓\n"},
        ]
    },
]
FAMILIES = ["phi3_5", "smollm2", "qwen2_5", "llama3_2", "phi4_mini", "phi3_gguf"]
# The default system prompt a template renders when the conversation has none.
DEFAULT_SYSTEM = {"smollm2": "You are a helpful AI assistant named SmolLM", "qwen2_5": "You are Qwen"}


def served_tokenizer(tokenizer, tmp_path):
    """The tokenizer as the server gets it: saved with the model and loaded back."""
    tokenizer.save_pretrained(tmp_path / "served")
    return AutoTokenizer.from_pretrained(tmp_path / "served")


def trained_rows(prepared_dir):
    for split in ("train", "test"):
        path = prepared_dir / f"{split}.jsonl"
        if not path.exists() or not path.read_text().strip():
            continue
        messages = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]
        yield from zip(messages, pq.read_table(prepared_dir / f"{split}.tokens.parquet").to_pylist())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_reply_is_trained_after_exactly_the_prompt_the_server_renders(
    compose_train, tmp_path, chat_family, family
):
    overrides = GGUF if family == "phi3_gguf" else ()
    tokenizer, data = prepared(compose_train, tmp_path, chat_family(family), *overrides, rows=ROWS)
    server = Generator(None, served_tokenizer(tokenizer, tmp_path))
    replies = 0
    for messages, row in trained_rows(data.dir):
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = server.prompt_ids(messages[:k])
            assert row["input_ids"][: len(prompt)] == prompt, (family, k, tokenizer.decode(prompt))
            assert row["labels"][len(prompt)] != IGNORE_INDEX  # the reply's first token is trained
            replies += 1
        text = tokenizer.decode(row["input_ids"])
        if family in DEFAULT_SYSTEM and messages[0]["role"] != "system":
            assert DEFAULT_SYSTEM[family] in text  # rendered as the template does, not skipped
        assert "<|im_start|>system\n<|im_end|>" not in text  # no empty ChatML system block
    assert replies == 4


def test_a_date_fixed_at_training_is_the_date_served(chat_family, tmp_path):
    """Llama 3.2 writes today's date into every prompt: the one of training is logged with the model
    (in its template) and rendered by the server on any later day."""
    tokenizer = AutoTokenizer.from_pretrained(chat_family("llama3_2"))
    messages = [{"role": "user", "content": "Hi"}]
    today = tokenizer.decode(Generator(None, tokenizer).prompt_ids(messages))
    assert date.today().strftime("%d %b %Y") in today

    tokenizer.chat_template, fixed = fix_changing_inputs(tokenizer.chat_template, date(2024, 7, 26))
    assert fixed == {"strftime_now(%d %b %Y)": "26 Jul 2024"}
    served = served_tokenizer(tokenizer, tmp_path)
    assert fixed_inputs(served.chat_template) == fixed
    rendered = served.decode(Generator(None, served).prompt_ids(messages))
    assert rendered == today.replace(date.today().strftime("%d %b %Y"), "26 Jul 2024")
    assert fix_changing_inputs(served.chat_template)[0] == served.chat_template  # fixed once, kept
