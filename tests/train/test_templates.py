"""Any chat model: a model that will stop (generation stopping where its chat template ends a reply,
a pad that is no stop token) and the chat template it is trained with. On tiny models of several
families with their real templates (tests/tiny_families.py) and on Phi-3-mini's real vocabulary
(phi3_gguf)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from tests.tiny_families import trl_template
from train import model
from train.config import ModelConfig
from train.errors import ConfigError


def model_cfg(model_dir: str, **keys):
    return OmegaConf.structured(ModelConfig(model_dir, "tiny", **keys))


# -- will it stop: generation stop ids and the pad token ------------------------------------------


@pytest.mark.parametrize(
    "family,pad,added",
    [
        ("phi3_5", "<|pad|>", True),  # pad <|endoftext|> is a stop token; a spare row takes <|pad|>
        ("qwen2_5", "<|pad|>", True),
        ("phi4_mini", "<|pad|>", True),
        ("llama3_2", "<|finetune_right_pad_id|>", False),  # no pad, no unk, no spare row
        ("phi3_gguf", "<unk>", False),  # the GGUF fills every row
    ],
)
def test_the_pad_is_no_stop_token_and_never_grows_the_embedding(chat_family, family, pad, added):
    path = chat_family(family)
    keys = {"stop_tokens": ["<|end|>", "<|endoftext|>"]} if family == "phi3_gguf" else {}
    tokenizer = model.load_tokenizer(model_cfg(path, **keys))
    assert tokenizer.pad_token == pad
    assert (
        len(tokenizer)
        == len(AutoTokenizer.from_pretrained(path)) + added
        <= AutoConfig.from_pretrained(path).vocab_size
    )
    stops = (
        keys
        and tokenizer.convert_tokens_to_ids(keys["stop_tokens"])
        or GenerationConfig.from_pretrained(path).eos_token_id
    )
    assert tokenizer.pad_token_id not in stops


def test_a_pad_that_is_a_stop_token_or_would_need_a_new_row_is_refused(chat_family):
    qwen = chat_family("qwen2_5")
    with pytest.raises(ConfigError, match=r"model.pad_token=<\|im_end\|> is a stop token"):
        model.load_tokenizer(model_cfg(qwen, pad_token="<|im_end|>"))
    tokenizer = AutoTokenizer.from_pretrained(qwen)  # no unk, no reserved token; here no spare row
    stops = GenerationConfig.from_pretrained(qwen).eos_token_id
    with pytest.raises(ConfigError, match="no pad token that is not a stop token.*Set model.pad_token"):
        model.choose_pad_token(tokenizer, "<|pad|>", rows=len(tokenizer), stops=stops)


def test_generation_must_stop_where_the_template_ends_a_reply(chat_family):
    gguf = chat_family("phi3_gguf")
    with pytest.raises(ConfigError) as no_stop:
        model.load_tokenizer(model_cfg(gguf))
    assert str(no_stop.value).startswith(
        f"generation_config.eos_token_id [32000] of {gguf} lacks '<|end|>' (id 32007), the token its chat "
        "template ends every reply with"
    )
    assert "\"model.stop_tokens=['<|end|>','<|endoftext|>']\"" in str(no_stop.value)
    with pytest.raises(ConfigError, match=r"model.stop_tokens: \['<\|stop\|>'\] are not in the vocabulary"):
        model.load_tokenizer(model_cfg(gguf, stop_tokens=["<|stop|>"]))

    cfg = model_cfg(gguf, stop_tokens=["<|end|>", "<|endoftext|>"], dtype="float32")
    lm = model.load_model(
        cfg, OmegaConf.create({"method": "none", "load_in_4bit": False}), model.load_tokenizer(cfg)
    )
    assert lm.generation_config.eos_token_id == [32007, 32000]  # logged with the model, so served


def test_model_chat_template_takes_a_file_or_a_trl_name(tmp_path, chat_family):
    path = chat_family("qwen2_5")
    assert model.load_tokenizer(model_cfg(path, chat_template="qwen2_5")).chat_template == trl_template(
        "qwen2_5"
    )
    copy = tmp_path / "t.jinja"
    copy.write_text(trl_template("qwen2_5"), encoding="utf-8")
    assert model.load_tokenizer(model_cfg(path, chat_template=str(copy))).chat_template == trl_template(
        "qwen2_5"
    )
    with pytest.raises(
        ConfigError,
        match=r"model.chat_template=qwen9: no such file, and not a template TRL ships \(.*qwen2_5",
    ):
        model.load_tokenizer(model_cfg(path, chat_template="qwen9"))
