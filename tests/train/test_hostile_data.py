"""Hostile and careless data through `python -m train.prepare` (docs/data-checks.md): what each
class of input gets. The first two tests run the command itself; the rest call
`prepare_and_report`, the function the command runs, with the real config and the tiny model's
tokenizer (its special tokens are Phi-3's: `<|end|>`, `<|endoftext|>`, `<|user|>`, ...)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_module
from train import model
from train.errors import DataError
from train.prepare import ChatTokenizer
from train.prepare.cli import prepare_and_report


def chat(question: str, answer: str = "hello") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def many_turns(n: int) -> dict:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(n)]
    return {"messages": turns}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def hostile_folder(root: Path) -> Path:
    """A data folder with one of each: special-token text, a too-long conversation, copies, a CSV
    with a bad byte in one row, a dangling link and a link loop."""
    folder = root / "data"
    folder.mkdir()
    rows = [chat(f"question {i}?", f"answer {i}.") for i in range(8)]
    rows += [chat("question 0?", "answer 0."), chat("question 0?", "answer 0.")]  # two copies of row 1
    rows += [chat("How do replies end?", "With <|end|> and then"), many_turns(30)]  # lines 11 and 12
    write_jsonl(folder / "a.jsonl", rows)
    (folder / "b.csv").write_bytes(b"prompt,completion\nhi,hello\nbad \xff byte,ok\nbye,goodbye\n")
    (folder / "c.jsonl").symlink_to(root / "gone.jsonl")
    (folder / "d.jsonl").symlink_to(folder / "d.jsonl")
    return folder


def prepare_cli(tmp_path: Path, source: Path, *overrides: str):
    return run_module(
        "train.prepare",
        f"data.source={source}",
        "data.eval_source=null",
        f"data.output_dir={tmp_path}/prepared",
        "data.max_turns=20",
        f"paths.output_root={tmp_path}/outputs",
        *overrides,
    )


@pytest.mark.slow
def test_the_command_skips_and_counts_every_hostile_row_of_a_folder(tmp_path):
    result = prepare_cli(tmp_path, hostile_folder(tmp_path), "data.on_error=skip", "data.test_size=0.3")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "prepared"
    stats = json.loads((out / "stats.json").read_text())
    # 12 + 3 rows; rejected: special-token text, 30 turns, the bad byte; 2 copies found, kept together.
    assert (stats["rows_read"], stats["rejected"], stats["kept"]) == (15, 3, 12)
    assert (stats["special_token_text"], stats["over_max_turns"], stats["duplicates"]) == (1, 1, 2)
    links = [Path(p).name for p in stats["unreadable_links"]]
    assert links == ["c.jsonl", "d.jsonl"]
    rejects = {
        (Path(r["source"]).name, r.get("line")): r["reason"] for r in read_jsonl(out / "rejects.jsonl")
    }
    assert "'<|end|>'" in rejects[("a.jsonl", 11)] and "special token" in rejects[("a.jsonl", 11)]
    assert "data.max_turns=20" in rejects[("a.jsonl", 12)]
    assert "invalid UTF-8: byte 0xff" in rejects[("b.csv", 3)]
    assert "dangling link" in rejects[("c.jsonl", None)]
    assert "unreadable links  2" in result.stdout and "2 found" in result.stdout
    copies = [
        name
        for name in ("train", "test")
        if chat("question 0?", "answer 0.") in read_jsonl(out / f"{name}.jsonl")
    ]
    assert len(copies) == 1  # all three copies on one side


@pytest.mark.slow
def test_the_command_stops_at_special_token_text_naming_file_and_line(tmp_path):
    src = write_jsonl(
        tmp_path / "chats.jsonl", [chat("hi"), chat("What ends a reply?", "The <|end|> token.")]
    )
    result = prepare_cli(tmp_path, src)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"{src} line 2: messages[1] (assistant) holds the text '<|end|>'" in line
    assert "data.on_error=skip" in line
    assert not (tmp_path / "prepared" / "train.jsonl").exists()


def prepare(compose_train, tmp_path: Path, source: Path, *overrides: str) -> dict:
    cfg = compose_train(
        f"data.source={source}",
        "data.eval_source=null",
        f"data.output_dir={tmp_path}/prepared",
        *overrides,
        tmp=tmp_path,
    )
    return prepare_and_report(cfg).stats


def test_special_token_text_is_never_a_special_token_id(compose_train, tmp_path):
    """Each special token's text in any role is refused and counted; the trained ids never hold a
    special token id where the data had text."""
    cfg = compose_train(tmp=tmp_path)
    tokenizer = model.load_tokenizer(cfg.model)
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    assert {"<|end|>", "<|endoftext|>", "<|user|>"} <= set(specials)
    hostile = [chat(f"Say {token} now", "ok") for token in specials]
    hostile += [chat("hi", f"a reply with {token} inside") for token in specials]
    src = write_jsonl(
        tmp_path / "chats.jsonl", [chat("fine?", "fine."), *hostile, chat("also fine?", "yes.")]
    )
    stats = prepare(compose_train, tmp_path, src, "data.on_error=skip")
    assert (stats["special_token_text"], stats["rejected"], stats["kept"]) == (len(hostile), len(hostile), 2)
    assert [r["line"] for r in read_jsonl(tmp_path / "prepared" / "rejects.jsonl")] == list(
        range(2, 2 + len(hostile))
    )


def test_work_per_row_is_linear_in_its_turns_and_max_turns_names_the_row(
    compose_train, tmp_path, monkeypatch
):
    """Fitting a long conversation to max_length tokenizes O(log n) bounded prefixes, not every
    prefix (which was quadratic: minutes at 4,000 turns; bench/long_rows.py times it), and a row
    over data.max_turns is named."""
    tokenized = []
    encode = ChatTokenizer.encode

    def spy(self, conversations, **kwargs):
        tokenized.append(sum(len(m["content"]) for c in conversations for m in c))
        return encode(self, conversations, **kwargs)

    monkeypatch.setattr(ChatTokenizer, "encode", spy)
    row = many_turns(4000)
    src = write_jsonl(tmp_path / "long.jsonl", [row, chat("short")])
    stats = prepare(compose_train, tmp_path, src, "data.max_turns=null", "sft.max_length=256")
    assert stats["truncated_turns"] == 1 and stats["tokens"]["max"] <= 256
    whole = sum(len(m["content"]) for m in row["messages"])
    assert len(tokenized) <= 3 + 13 and sum(tokenized) < 4 * whole  # every prefix: about 1,000 x whole
    src = write_jsonl(tmp_path / "capped.jsonl", [chat("short"), many_turns(1001)])
    cfg = compose_train(f"data.source={src}", "data.eval_source=null", tmp=tmp_path / "capped")
    with pytest.raises(DataError, match=r"capped\.jsonl line 2: 1001 messages, over data\.max_turns=1000"):
        prepare_and_report(cfg)


def test_copies_never_straddle_the_split_and_are_counted(compose_train, tmp_path):
    rows = [chat(f"q{i}?", f"a{i}.") for i in range(10)]
    rows += [rows[i] for i in range(10) for _ in range(i % 3)]  # 0, 1 or 2 extra copies of each
    src = write_jsonl(tmp_path / "chats.jsonl", rows)
    for seed in range(5):
        stats = prepare(compose_train, tmp_path / str(seed), src, f"seed={seed}", "data.test_size=0.3")
        out = tmp_path / str(seed) / "prepared"
        train, test = (read_jsonl(out / f"{name}.jsonl") for name in ("train", "test"))
        assert stats["duplicates"] == 9 and stats["duplicates_removed"] == 0
        assert len(train) + len(test) == 19 and test
        assert not {json.dumps(r) for r in train} & {json.dumps(r) for r in test}


def test_a_bad_byte_in_a_csv_costs_its_row_and_is_named_by_its_line(compose_train, tmp_path):
    src = tmp_path / "chats.csv"
    # The bad byte is in a quoted cell spanning lines 3-4, after 300 KB of good rows: its record starts
    # on line 3 + 3000 = 3003, far from where a decoder's buffer would end.
    good = "".join(f"question {i},answer {i}\n" for i in range(3000)).encode()
    src.write_bytes(
        b"prompt,completion\n" + b"hi,hello\n" + good + b'"two\nlines \xe9",ok\n' + b"bye,goodbye\n"
    )
    stats = prepare(compose_train, tmp_path, src, "data.on_error=skip")
    assert (stats["rows_read"], stats["rejected"], stats["kept"]) == (3003, 1, 3002)
    (reject,) = read_jsonl(tmp_path / "prepared" / "rejects.jsonl")
    assert reject["line"] == 3003 and "byte 0xe9 at character 11 of column 1" in reject["reason"]
    assert reject["raw"][0] == "two\nlines \\xe9"
    cfg = compose_train(f"data.source={src}", "data.eval_source=null", tmp=tmp_path)
    with pytest.raises(DataError, match=r"chats\.csv line 3003: invalid UTF-8: byte 0xe9"):
        prepare_and_report(cfg)


def test_unreadable_links_are_counted_and_listed_or_stop_the_run(compose_train, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [chat("hi"), chat("bye")])
    os.symlink(tmp_path / "nowhere.jsonl", folder / "b.jsonl")
    os.symlink(folder / "c.jsonl", folder / "c.jsonl")
    stats = prepare(compose_train, tmp_path, folder, "data.on_error=skip")
    assert [Path(p).name for p in stats["unreadable_links"]] == ["b.jsonl", "c.jsonl"]
    assert stats["kept"] == 2
    cfg = compose_train(f"data.source={folder}", "data.eval_source=null", tmp=tmp_path / "fail")
    with pytest.raises(
        DataError, match=r"b\.jsonl: a dangling link \(to .*nowhere\.jsonl, which does not exist\)"
    ):
        prepare_and_report(cfg)
