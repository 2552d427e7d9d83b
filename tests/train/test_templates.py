"""Any chat model: assistant-only masks for any chat template, no turn lost silently, and a model
that will stop (its end of turn trained after every reply, generation stopping there, a pad that is
no stop token). On tiny models of several families with their real templates
(tests/tiny_families.py) and on Phi-3-mini's real vocabulary (phi3_gguf)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from tests.tiny_families import trl_template
from train import model
from train.config import ModelConfig
from train.data import prepare_for
from train.errors import ConfigError, DataError
from train.prepare import ChatTokenizer, preview

ROW = {
    "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Which day comes after Monday?"},
        {"role": "assistant", "content": "Tuesday"},
        {"role": "user", "content": "And after that?"},
        {"role": "assistant", "content": "Wednesday"},
    ]
}
# Phi-3-mini's early template has no system role, and the GGUF's generation config stops at
# <|endoftext|> only, which that template never writes.
GGUF = ("data.merge_system_into_first_user=true", "model.stop_tokens=['<|end|>','<|endoftext|>']")


def prepared(compose_train, tmp_path, model_dir, *overrides, rows=(ROW,)):
    """`python -m train.prepare`'s steps on `rows` with the model in `model_dir`."""
    src = tmp_path / "chats.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = compose_train(
        f"model.name_or_path={model_dir}",
        f"data.source={src}",
        "data.eval_source=null",
        f"paths.cache_dir={tmp_path}/cache",
        *overrides,
        tmp=tmp_path,
    )
    tokenizer = model.load_tokenizer(cfg.model)
    return tokenizer, prepare_for(cfg, tokenizer)


def model_cfg(model_dir: str, **keys):
    return OmegaConf.structured(ModelConfig(model_dir, "tiny", **keys))


# The trained runs of ROW (decoded), per family: every reply with the token that ends it, and only
# replies; TRL's variants where TRL has one (phi3_5, qwen2_5: it trains the newline after
# "assistant"), by rendering otherwise.
TRAINED = {
    "phi3_5": ["Tuesday<|end|>\n", "Wednesday<|end|>\n<|endoftext|>"],
    "qwen2_5": ["\nTuesday<|im_end|>\n", "\nWednesday<|im_end|>\n"],
    "llama3_2": ["Tuesday<|eot_id|>", "Wednesday<|eot_id|>"],
    "phi4_mini": ["Tuesday<|end|>", "Wednesday<|end|><|endoftext|>"],
    # SentencePiece writes "\n" as "▁" + <0x0A>, both on one character; the span rule trains the first.
    "phi3_gguf": ["Tuesday<|end|> ", "Wednesday<|end|> "],
}


@pytest.mark.parametrize("family", TRAINED)
def test_each_family_trains_every_reply_with_its_end_of_turn_and_nothing_else(
    compose_train, tmp_path, chat_family, family
):
    overrides = GGUF if family == "phi3_gguf" else ()
    tokenizer, prepared_data = prepared(compose_train, tmp_path, chat_family(family), *overrides)
    (row,) = pq.read_table(prepared_data.dir / "train.tokens.parquet").to_pylist()
    runs = preview.runs(row["input_ids"], row["labels"])
    assert [tokenizer.decode(ids) for trained, ids in runs if trained] == TRAINED[family]
    assert "Answer briefly." in tokenizer.decode(row["input_ids"])  # the system text is not lost


@pytest.mark.parametrize("family,template", [("phi3_5", "phi3_5"), ("llama3_2", "llama3")])
def test_masks_by_rendering_equal_those_of_trls_training_variant(chat_family, family, template):
    rows = [
        ROW["messages"],
        ROW["messages"][1:3],
        [{"role": "user", "content": "Ünïcödé — 日本語? 🙂"}, {"role": "assistant", "content": " Ja ✓\n"}],
    ]
    known = AutoTokenizer.from_pretrained(chat_family(family))
    known.chat_template = trl_template(template)
    unknown = AutoTokenizer.from_pretrained(chat_family(family))
    unknown.chat_template = "{#- a copy TRL does not recognise -#}\n" + known.chat_template
    by_trl, by_rendering = ChatTokenizer(known), ChatTokenizer(unknown)
    assert (by_trl.masks_by_rendering, by_rendering.masks_by_rendering) == (False, True)
    assert [(e.input_ids, e.labels) for e in by_rendering.encode(rows)] == [
        (e.input_ids, e.labels) for e in by_trl.encode(rows)
    ]


def test_a_template_that_rerenders_earlier_turns_is_refused_with_the_ways_out(
    compose_train, tmp_path, chat_family
):
    """Qwen3's original template drops the <think> block of replies before the last user turn. TRL
    ships a training variant for it; a copy TRL does not recognise is masked by rendering: refused."""
    template = tmp_path / "qwen3_copy.jinja"
    template.write_text("{#- not TRL's -#}\n" + trl_template("qwen3"), encoding="utf-8")
    qwen = chat_family("qwen2_5")
    with pytest.raises(ConfigError) as refused:
        prepared(compose_train, tmp_path, qwen, f"model.chat_template={template}")
    message = str(refused.value)
    assert message.startswith(
        f"{qwen}: messages[1] (a reply) is rendered differently once later turns follow"
    )
    assert "sft.assistant_only_loss=false" in message and "model.chat_template=" in message
    _, whole = prepared(
        compose_train, tmp_path, qwen, f"model.chat_template={template}", "sft.assistant_only_loss=false"
    )
    assert whole.stats["tokens"]["train_trained"] == whole.stats["tokens"]["train"]


def test_a_system_turn_the_template_cannot_render_is_an_error_or_merged(compose_train, tmp_path, chat_family):
    gguf = chat_family("phi3_gguf")
    with pytest.raises(DataError) as lost:
        prepared(compose_train, tmp_path, gguf, GGUF[1])
    assert str(lost.value).startswith(
        f"{tmp_path / 'chats.jsonl'} line 1: messages[0] (system) does not appear in the rendering"
    )
    assert "data.merge_system_into_first_user=true" in str(lost.value)

    _, merged = prepared(compose_train, tmp_path, gguf, *GGUF)
    (row,) = [json.loads(line) for line in (merged.dir / "train.jsonl").read_text().splitlines()]
    assert row["messages"][0] == {
        "role": "user",
        "content": "Answer briefly.\n\nWhich day comes after Monday?",
    }

    later = {
        "messages": [
            *ROW["messages"][1:3],
            {"role": "system", "content": "Now in French."},
            *ROW["messages"][3:],
        ]
    }
    with pytest.raises(DataError, match=r"line 1: messages\[2\] \(system\) does not appear"):
        prepared(compose_train, tmp_path, gguf, *GGUF, rows=[later])  # only a leading one is merged


@pytest.mark.parametrize(
    "generation,problem",
    [
        (
            "{{ m['content'] }}{% endgeneration %}{{ '<|end|>\\n' }}",
            "the end-of-turn token '<|end|>' after messages[1]",
        ),
        ("{% endgeneration %}{{ m['content'] + '<|end|>\\n' }}", "no token of it is trained"),
    ],
)
def test_a_row_that_would_not_teach_the_model_to_stop_is_named(
    compose_train, tmp_path, chat_family, generation, problem
):
    """A template whose {% generation %} block leaves out the end of turn (the failure TRL only warns
    about), or covers nothing at all."""
    template = tmp_path / "markers.jinja"
    template.write_text(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|assistant|>\\n' }}{% generation %}"
        + generation
        + "{% else %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        encoding="utf-8",
    )
    one_exchange = {"messages": ROW["messages"][1:3]}
    with pytest.raises(DataError, match=rf"chats\.jsonl line 1: {problem}"):
        prepared(
            compose_train,
            tmp_path,
            chat_family("phi3_5"),
            f"model.chat_template={template}",
            rows=[one_exchange],
        )


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


def test_preparation_is_keyed_by_the_date_training_fixed_in_the_template(chat_family, monkeypatch):
    """Llama 3.2's template writes today's date: training fixes it when the tokenizer loads
    (common.rendering), so a run started on a new day prepares anew instead of reusing ids
    rendered with another date, and the day does not change under a running training."""
    from datetime import datetime

    import transformers.utils.chat_template_utils as jinja_env

    import common.rendering

    tokenizer = model.load_tokenizer(model_cfg(chat_family("llama3_2")))
    today = ChatTokenizer(tokenizer).fingerprint()

    class Tomorrow(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2030, 1, 1)

        @classmethod
        def today(cls):
            return datetime(2030, 1, 1)

    monkeypatch.setattr(jinja_env, "datetime", Tomorrow)  # what the template's strftime_now reads
    assert ChatTokenizer(tokenizer).fingerprint() == today  # the loaded tokenizer keeps its date
    monkeypatch.setattr(common.rendering, "date", Tomorrow)  # what a run started then would fix
    assert ChatTokenizer(model.load_tokenizer(model_cfg(chat_family("llama3_2")))).fingerprint() != today
