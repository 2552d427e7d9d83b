"""The offline tiny model is a real Phi-3 checkpoint directory with Phi-3.5's chat format."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from train import sample_data, tiny_model
from train.tiny_model import ensure_tiny_phi3


def test_builds_once_into_a_hub_style_directory(tiny_cache):
    path = Path(ensure_tiny_phi3(tiny_cache))
    assert ensure_tiny_phi3(tiny_cache) == str(path)  # cached, same directory
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in path.iterdir()
    }
    assert AutoConfig.from_pretrained(path).model_type == "phi3"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tiny-phi3-")]  # no staging left


def test_chat_template_renders_phi3_turns_and_stops_at_end(tiny_cache):
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_phi3(tiny_cache))
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Which day comes after Monday?"},
        {"role": "assistant", "content": "Tuesday"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|system|>\nAnswer briefly.<|end|>\n<|user|>\nWhich day")
    assert "<|assistant|>\nTuesday<|end|>\n" in text
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    # Special tokens are single ids, never split by BPE.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|end|>")) >= 3


def test_special_tokens_and_stop_ids_are_phi35s(tiny_cache):
    """microsoft/Phi-3.5-mini-instruct: <|end|> closes a turn, <|endoftext|> is EOS (and pad);
    generation stops at [<|end|>, <|assistant|>, <|endoftext|>]; the embedding has spare rows."""
    path = ensure_tiny_phi3(tiny_cache)
    tokenizer = AutoTokenizer.from_pretrained(path)
    roles = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token)
    assert roles == ("<s>", "<|endoftext|>", "<unk>", "<|endoftext|>")
    stops = GenerationConfig.from_pretrained(path).eos_token_id
    assert tokenizer.convert_ids_to_tokens(stops) == ["<|end|>", "<|assistant|>", "<|endoftext|>"]
    assert AutoConfig.from_pretrained(path).vocab_size > len(tokenizer)


def test_cache_key_covers_token_roles_and_stop_ids(monkeypatch):
    """An older tiny model (EOS <|end|>, no <s>) is never picked up from the cache as this one."""
    key = tiny_model._fingerprint()
    monkeypatch.setattr(tiny_model, "ROLES", {**tiny_model.ROLES, "eos_token": "<|end|>"})
    assert tiny_model._fingerprint() != key
    monkeypatch.undo()
    monkeypatch.setattr(tiny_model, "STOP_TOKENS", ["<|end|>"])
    assert tiny_model._fingerprint() != key


def test_committed_sample_data_matches_its_generator():
    train, test = sample_data.generate()
    for rows, path in ((train, sample_data.TRAIN_FILE), (test, sample_data.TEST_FILE)):
        committed = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert committed == rows, f"{path} is stale: run `python -m train.sample_data`"


def test_held_out_prompts_never_occur_in_training_data():
    train, test = sample_data.generate()
    seen = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    assert not {m["content"] for r in test for m in r["messages"] if m["role"] == "user"} & seen
