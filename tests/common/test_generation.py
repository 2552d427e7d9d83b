"""The character bound servers refuse prompts with before tokenizing (common.generation), on
Phi-3-mini's real vocabulary (../shared/models/phi3-vocab) and the tiny model's."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from common.generation import longest_token_chars
from common.paths import PROJECT_ROOT
from tests.tiny_families import PHI3_VOCAB


def phi3_tokenizer():
    if not (PHI3_VOCAB / "ggml-vocab-phi-3.gguf").exists():
        pytest.skip(f"Phi-3's vocabulary is not at {PHI3_VOCAB}")
    return AutoTokenizer.from_pretrained(PHI3_VOCAB, gguf_file="ggml-vocab-phi-3.gguf")


def tiny_tokenizer():
    from train.tiny_model import ensure_tiny_phi3

    return AutoTokenizer.from_pretrained(ensure_tiny_phi3())


@pytest.mark.parametrize("load", [phi3_tokenizer, tiny_tokenizer])
def test_no_prompt_that_fits_is_refused_by_the_character_bound(load):
    """The bound is sound: no token decodes to more characters than it, so a text of more than
    context x bound characters has more than context tokens; llama.cpp's 46 reference strings
    (and the bundled training data) never have more characters than their tokens x the bound."""
    tokenizer = load()
    bound = longest_token_chars(tokenizer)
    assert max(len(tokenizer.decode([i])) for i in range(len(tokenizer))) <= bound
    texts = [(PROJECT_ROOT / "train" / "assets" / "sample_train.jsonl").read_text(encoding="utf-8")[:20_000]]
    references = PHI3_VOCAB / "ggml-vocab-phi-3.gguf.inp"
    if references.exists():
        texts += references.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    for text in filter(None, texts):
        assert len(text) <= bound * len(tokenizer.encode(text, add_special_tokens=False))
