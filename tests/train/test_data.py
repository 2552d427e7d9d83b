"""The training side of data preparation: one prepare path for local and hub sources, cached by
content, tokenized exactly as TRL would, and previewed as the trainer receives it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trl import SFTTrainer

from common.rendering import as_rendered
from train import model
from train.data import load_splits, prepare_for
from train.prepare import ChatTokenizer, DataError, preview
from train.prepare.cli import prepare_and_report
from train.prepare.tokens import IGNORE_INDEX, MARGIN_TOKENS
from train.recipe import sft_args

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SHAREGPT = SHARED_DATA / "sharegpt_dummy_conversation.json"


def chat(question: str, answer: str = "hello") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def local(compose_train, tmp_path, source, *overrides):
    """The real train config with a local source and outputs (and the prepared cache) in tmp_path."""
    cfg = compose_train(
        f"data.source={source}",
        "data.eval_source=null",
        f"paths.cache_dir={tmp_path}/cache",
        *overrides,
        tmp=tmp_path,
    )
    return cfg, model.load_tokenizer(cfg.model)


def test_sharegpt_file_prepares_to_messages_and_tokens(compose_train, tmp_path):
    if not SHAREGPT.exists():
        pytest.skip(f"third-party sample data not found at {SHARED_DATA}")
    cfg, tokenizer = local(compose_train, tmp_path, SHAREGPT, "data.test_size=0.1", "sft.max_length=4096")
    splits, prepared = load_splits(cfg, tokenizer)
    assert (len(splits["train"]), len(splits["test"])) == (450, 50)
    assert set(splits["train"].column_names) == {"messages", "input_ids", "labels"}
    assert prepared.stats["formats"] == {"sharegpt": 500}
    assert {m["role"] for m in splits["train"][0]["messages"]} <= {"system", "user", "assistant"}
    tokens = prepared.stats["tokens"]
    assert 0 < tokens["p50"] <= tokens["p95"] <= tokens["max"] <= 4096
    assert tokens["train"] == sum(len(ids) for ids in splits["train"]["input_ids"])


def test_a_bad_row_stops_before_training_naming_file_and_line(compose_train, tmp_path):
    bad = write_jsonl(
        tmp_path / "chats.jsonl", [chat("hi"), {"messages": [{"role": "user", "content": "x"}]}]
    )
    cfg, tokenizer = local(compose_train, tmp_path, bad)
    with pytest.raises(DataError, match=r"chats\.jsonl line 2: .*assistant"):
        load_splits(cfg, tokenizer)


def test_skip_mode_trains_on_the_rest_and_lists_rejects(compose_train, tmp_path):
    src = tmp_path / "chats.jsonl"
    src.write_text("\n".join([json.dumps(chat(f"q{i}")) for i in range(4)] + ["{not json"]) + "\n")
    cfg, tokenizer = local(compose_train, tmp_path, src, "data.on_error=skip")
    splits, prepared = load_splits(cfg, tokenizer)
    assert len(splits["train"]) + len(splits["test"]) == 4
    (reject,) = (prepared.dir / "rejects.jsonl").read_text().splitlines()
    assert json.loads(reject)["line"] == 5


def test_several_paths_are_refused_with_the_key_named(compose_train, tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"data.source=\[a.jsonl,b.jsonl\]"):
        local(compose_train, tmp_path, "[a.jsonl,b.jsonl]")


# -- tokenization: exactly what TRL's SFTTrainer builds -------------------------------------------


@pytest.mark.parametrize("assistant_only_loss", [True, False])
def test_batched_tokenization_equals_trl_own_preparation(compose_train, tmp_path, assistant_only_loss):
    rows = [chat("Count the words: a b c", "3"), chat("Ünïcödé — 日本語? 🙂", "Ja ✓")]
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "one"},
                {"role": "user", "content": "second"},
                {"role": "assistant", "content": "two"},
            ]
        }
    )
    cfg, tokenizer = local(
        compose_train,
        tmp_path,
        "unused.jsonl",
        f"sft.assistant_only_loss={assistant_only_loss}",
        "sft.eval_strategy=no",
    )
    ours = ChatTokenizer(tokenizer, assistant_only_loss).encode([r["messages"] for r in rows])

    from datasets import Dataset

    raw = Dataset.from_list([{"messages": as_rendered(tokenizer, r["messages"])} for r in rows])
    args = sft_args(cfg)
    args.assistant_only_loss = assistant_only_loss  # TRL's own masking (the recipe hands it labels)
    trainer = SFTTrainer(
        model=model.load_model(cfg.model, cfg.peft, tokenizer),
        args=args,
        train_dataset=raw,
        processing_class=tokenizer,
    )
    assert [e.input_ids for e in ours] == trainer.train_dataset["input_ids"]
    assert [e.labels for e in ours] == trainer.train_dataset["labels"]
    masked = sum(label == IGNORE_INDEX for e in ours for label in e.labels)
    assert (masked > 0) == assistant_only_loss


def test_preview_marks_exactly_the_tokens_the_trainer_trains_on(compose_train, tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", [chat(f"question {i}?", f"answer {i}") for i in range(6)])
    cfg, tokenizer = local(compose_train, tmp_path, src, "sft.eval_strategy=no")
    splits, prepared = load_splits(cfg, tokenizer)
    trainer = SFTTrainer(
        model=model.load_model(cfg.model, cfg.peft, tokenizer),
        args=sft_args(cfg),
        train_dataset=splits["train"],
        processing_class=tokenizer,
    )
    shown = pq.read_table(prepared.dir / "train.tokens.parquet").to_pylist()
    for row, received in zip(shown, trainer.train_dataset):
        ids, labels = preview.trainer_view(row["input_ids"], row["labels"], cfg.sft)
        assert (ids, labels) == (received["input_ids"], received["labels"])
        trained_ids = [t for trained, run in preview.runs(ids, labels) if trained for t in run]
        assert trained_ids == [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    text = preview.render(cfg, tokenizer, prepared, 2, color=False)
    assert text.count("--- example") == 2
    assert "⟦answer" in text and "⟦question" not in text  # replies trained, prompts masked
    assert "tokens/conv    p50" in text


# -- length policy ---------------------------------------------------------------------------------


def long_multi_turn() -> dict:
    turns = []
    for i in range(6):
        turns += [
            {"role": "user", "content": f"turn {i} " + "word " * 8},
            {"role": "assistant", "content": "ok"},
        ]
    return {"messages": turns}


def test_truncate_keeps_whole_turns_that_fit_and_counts_everything(compose_train, tmp_path):
    too_long_prompt = chat("x " * 400)
    long_reply = chat("short?", "y " * 400)
    rows = [chat("fits"), long_multi_turn(), long_reply, too_long_prompt, chat("fits too")]
    src = write_jsonl(tmp_path / "chats.jsonl", rows)
    cfg, tokenizer = local(compose_train, tmp_path, src, "sft.max_length=64", "data.test_size=0.2")
    prepared = prepare_for(cfg, tokenizer)
    s = prepared.stats
    outcomes = ("over_max_length", "truncated_turns", "cut_at_max_length", "dropped_too_long")
    assert [s[k] for k in outcomes] == [3, 1, 1, 1]
    assert s["rows_read"] == s["kept"] + s["rejected"] + s["duplicates_removed"] + s["dropped_too_long"] == 5
    assert s["tokens"]["max"] <= 64
    (reject,) = [json.loads(line) for line in (prepared.dir / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 4 and "prompt alone" in reject["reason"]
    kept = [
        json.loads(line)["messages"]
        for name in ("train.jsonl", "test.jsonl")
        for line in (prepared.dir / name).read_text().splitlines()
    ]
    shortened = next(m for m in kept if m[0]["content"].startswith("turn 0"))
    assert 2 <= len(shortened) < 12 and shortened[-1]["role"] == "assistant"


def test_a_huge_message_is_clipped_before_tokenizing_then_follows_the_length_policy(
    compose_train, tmp_path, monkeypatch
):
    """A 2 MB reply costs what a long one does: no message longer than (max_length + margin) x the
    longest token's characters reaches the tokenizer (it could not fit anyway), the row is cut at
    max_length as the policy says, counted, and train.jsonl holds what was tokenized."""
    huge = chat("Repeat after me:", "lantern " * 250_000)
    src = write_jsonl(tmp_path / "chats.jsonl", [chat("fits"), huge, chat("fits too")])
    cfg, tokenizer = local(compose_train, tmp_path, src, "sft.max_length=64", "data.test_size=0.3")
    tokenized_lengths = []
    encode = ChatTokenizer.encode

    def spy(self, conversations, **kwargs):
        tokenized_lengths.extend(len(m["content"]) for c in conversations for m in c)
        return encode(self, conversations, **kwargs)

    monkeypatch.setattr(ChatTokenizer, "encode", spy)
    prepared = prepare_for(cfg, tokenizer)
    bound = (64 + MARGIN_TOKENS) * ChatTokenizer(tokenizer).longest_token_chars
    assert max(tokenized_lengths) == bound  # of the reply's 2,000,000 characters
    s = prepared.stats
    assert (s["clipped_rows"], s["cut_at_max_length"], s["kept"], s["tokens"]["max"]) == (1, 1, 3, 64)
    written = [
        m["content"]
        for name in ("train.jsonl", "test.jsonl")
        for line in (prepared.dir / name).read_text().splitlines()
        for m in json.loads(line)["messages"]
    ]
    assert max(map(len, written)) == bound


def test_drop_policy_drops_and_lists_every_long_conversation(compose_train, tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", [chat("fits"), long_multi_turn(), chat("fits too")])
    cfg, tokenizer = local(compose_train, tmp_path, src, "sft.max_length=64", "data.length_policy=drop")
    prepared = prepare_for(cfg, tokenizer)
    assert (prepared.stats["dropped_too_long"], prepared.stats["kept"]) == (1, 2)
    (reject,) = [json.loads(line) for line in (prepared.dir / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 2 and "length_policy=drop" in reject["reason"]


# -- cache ------------------------------------------------------------------------------------------


def test_cache_reuses_identical_preparations_and_misses_on_any_change(compose_train, tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", [chat(f"q{i}") for i in range(10)])
    cfg, tokenizer = local(compose_train, tmp_path, src)
    first = prepare_for(cfg, tokenizer)
    again = prepare_for(cfg, tokenizer)
    assert (first.reused, again.reused, again.dir) == (False, True, first.dir)
    (first.dir / ".finetune-phi-prepared").unlink()  # as an older version left its cache entries
    redone = prepare_for(cfg, tokenizer)
    assert (redone.reused, redone.dir) == (False, first.dir)  # the cache is ours: replaced, not refused

    write_jsonl(src, [chat(f"q{i}") for i in range(11)])  # the source changed
    changed = prepare_for(cfg, tokenizer)
    assert not changed.reused and changed.dir != first.dir and changed.stats["rows_read"] == 11

    cfg_longer, _ = local(compose_train, tmp_path, src, "sft.max_length=256")  # a setting changed
    assert prepare_for(cfg_longer, tokenizer).dir != changed.dir


def test_explicit_output_dir_is_rewritten_but_never_over_other_files(compose_train, tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", [chat(f"q{i}") for i in range(10)])
    out = tmp_path / "prepared"
    cfg, tokenizer = local(compose_train, tmp_path, src, f"data.output_dir={out}")
    assert prepare_for(cfg, tokenizer).dir == out
    write_jsonl(src, [chat(f"q{i}") for i in range(12)])
    assert prepare_for(cfg, tokenizer).stats["rows_read"] == 12  # an earlier preparation: replaced

    for name, files in {
        "notes": ["thesis.txt"],
        "project": ["manifest.json", "stats.json", "src/a.py"],
    }.items():
        other = tmp_path / name  # the second has files named like ours, but is not a preparation
        for file in files:
            (other / file).parent.mkdir(parents=True, exist_ok=True)
            (other / file).write_text("precious")
        cfg_other, _ = local(compose_train, tmp_path, src, f"data.output_dir={other}")
        with pytest.raises(DataError, match="holds other files"):
            prepare_for(cfg_other, tokenizer)
        assert all((other / file).read_text() == "precious" for file in files)

    (out / "notes.txt").write_text("mine")  # a file added to a preparation's folder is kept too
    write_jsonl(src, [chat(f"q{i}") for i in range(13)])  # changed data: the folder would be rewritten
    with pytest.raises(DataError, match=r"holds other files \(notes.txt"):
        prepare_for(cfg, tokenizer)
    assert (out / "notes.txt").read_text() == "mine"


def test_own_source_holds_out_its_rows_instead_of_the_bundled_test_set(compose_train, tmp_path):
    src = write_jsonl(tmp_path / "chats.jsonl", [chat(f"q{i}") for i in range(20)])
    cfg = compose_train(f"data.source={src}", f"paths.cache_dir={tmp_path}/cache", tmp=tmp_path)
    assert cfg.data.eval_source is None  # data=sample's test set goes with its own training set only
    prepared = prepare_for(cfg, model.load_tokenizer(cfg.model))
    assert (prepared.stats["train"], prepared.stats["test"]) == (16, 4)


@pytest.mark.parametrize(
    "url",
    ["https://acct.blob.core.windows.net/c/chats.jsonl?sv=2024&sig=SECRET", "https://h/d.jsonl?token=SECRET"],
)
def test_a_url_with_a_credential_is_refused_before_it_is_logged(compose_train, tmp_path, url):
    cfg, tokenizer = local(compose_train, tmp_path, f"'{url}'")
    with pytest.raises(DataError, match="credential in its query string") as err:
        prepare_for(cfg, tokenizer)
    assert "SECRET" not in str(err.value)


# -- hub datasets, offline: a folder in the hub's layout goes through the same load_dataset call ------


def hub_layout(root: Path, n: int) -> Path:
    """ultrachat_200k's layout and columns: data/<split>-00000-of-00001.parquet, prompt/prompt_id/messages."""
    (root / "data").mkdir(parents=True)
    for split in ("train_sft", "test_sft"):
        rows = [
            {"prompt": f"{split} {i}?", "prompt_id": f"{i:04d}", **chat(f"{split} {i}?", f"a{i}")}
            for i in range(n)
        ]
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def test_hub_source_with_split_expression_prepares_like_a_local_file(compose_train, tmp_path):
    repo = hub_layout(tmp_path / "ultrachat_200k", 40)
    cfg, tokenizer = local(
        compose_train,
        tmp_path,
        repo,
        "data.split='train_sft[:50%]'",
        "data.eval_split='test_sft[:5]'",
        "data.hub_config=null",
    )
    splits, prepared = load_splits(cfg, tokenizer)
    assert (len(splits["train"]), len(splits["test"])) == (20, 5)
    assert splits["test"][0]["messages"][0]["content"] == "test_sft 0?"
    assert prepared.stats["formats"] == {"messages": 25}

    cfg_more, _ = local(
        compose_train,
        tmp_path,
        repo,
        "data.split='train_sft[:75%]'",
        "data.eval_split='test_sft[:5]'",
        "data.hub_config=null",
    )
    assert prepare_for(cfg_more, tokenizer).dir != prepared.dir  # a new split expression is new content


def test_hub_rows_that_are_bad_are_named_by_dataset_split_and_record(compose_train, tmp_path):
    repo = hub_layout(tmp_path / "hub", 4)
    bad = {"prompt": "p", "prompt_id": "x", "messages": [{"role": "narrator", "content": "once"}]}
    table = pq.read_table(repo / "data" / "train_sft-00000-of-00001.parquet").to_pylist() + [bad]
    pq.write_table(pa.Table.from_pylist(table), repo / "data" / "train_sft-00000-of-00001.parquet")
    cfg, tokenizer = local(compose_train, tmp_path, repo, "data.split=train_sft", "data.hub_config=null")
    with pytest.raises(DataError, match=r"hub\[train_sft\] record 5: .*unknown role 'narrator'"):
        prepare_for(cfg, tokenizer)


def test_an_unreachable_hub_dataset_says_what_a_source_can_be(compose_train, tmp_path, monkeypatch):
    # As HF_HUB_OFFLINE=1 does; set on the modules because they read the variable at import.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg, tokenizer = local(compose_train, tmp_path, "nobody/no-such-dataset", "data.split=train")
    with pytest.raises(DataError, match="cannot load this dataset.*local source is a"):
        prepare_for(cfg, tokenizer)


# -- the command ------------------------------------------------------------------------------------


def test_prepare_command_writes_the_files_and_prints_counts_and_preview(compose_train, tmp_path, capsys):
    src = write_jsonl(tmp_path / "chats.jsonl", [chat(f"q{i}?", f"a{i}") for i in range(20)])
    out = tmp_path / "out"
    cfg, _ = local(
        compose_train, tmp_path, src, f"data.output_dir={out}", "preview=2", "model.demo_only=false"
    )
    prepare_and_report(cfg)
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"train.jsonl", "test.jsonl", "stats.json", "rejects.jsonl"}
    assert f"wrote {out}/train.jsonl (16 conversations) and test.jsonl (4)" in printed
    assert printed.count("--- example") == 2 and "rows read      20" in printed
