"""`train.prepare`: every format, every kind of bad row in both modes, and reproducible splits."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.prepare import DataError, prepare, read_rows
from train.prepare.formats import RowError, detect_format, to_messages

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SHAREGPT_FILE = SHARED_DATA / "sharegpt_dummy_conversation.json"


def chat(question: str = "Hi?", answer: str = "Hello.") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def as_line(row) -> bytes:
    if isinstance(row, bytes):
        return row
    return (row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)).encode()


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines; a str or bytes row is written verbatim."""
    path.write_bytes(b"".join(as_line(row) + b"\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list:
    # Split on "\n" only: str.splitlines would also split at U+2028 inside a string.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def written(out: Path) -> list[list[dict]]:
    """Every conversation written, train then test."""
    return [row["messages"] for name in ("train", "test") for row in read_jsonl(out / f"{name}.jsonl")]


def user_assistant(question: str, answer: str) -> list[dict]:
    return chat(question, answer)["messages"]


# --- formats ---------------------------------------------------------------------------------

FORMAT_CASES = {  # name: (record, detected format, messages)
    "messages": (
        {"messages": [{"role": "system", "content": "Be brief."}, *user_assistant("Hi?", "Hello.")]},
        "messages",
        [{"role": "system", "content": "Be brief."}, *user_assistant("Hi?", "Hello.")],
    ),
    "ultrachat (prompt and messages)": (
        {"prompt": "Hi?", "prompt_id": "abc", **chat()},
        "messages",
        user_assistant("Hi?", "Hello."),
    ),
    "sharegpt": (
        {"id": "x", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
        "sharegpt",
        user_assistant("Hi?", "Hello."),
    ),
    "sharegpt with system, user/assistant speakers": (
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "user", "value": "Hi?"},
                {"from": "assistant", "value": "Hello."},
            ]
        },
        "sharegpt",
        [{"role": "system", "content": "Be brief."}, *user_assistant("Hi?", "Hello.")],
    ),
    "alpaca with input": (
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        "alpaca",
        user_assistant("Translate.\n\nBonjour", "Hello"),
    ),
    "alpaca, empty input, system": (
        {"instruction": "Say hi.", "input": "", "output": "Hi", "system": "Be brief."},
        "alpaca",
        [{"role": "system", "content": "Be brief."}, *user_assistant("Say hi.", "Hi")],
    ),
    "prompt_completion": (
        {"prompt": "2+2?", "completion": "4"},
        "prompt_completion",
        user_assistant("2+2?", "4"),
    ),
}


@pytest.mark.parametrize("case", FORMAT_CASES)
def test_each_format_becomes_messages(tmp_path, case):
    record, format, expected = FORMAT_CASES[case]
    stats = prepare(write_jsonl(tmp_path / "d.jsonl", [record]), tmp_path / "out")
    assert written(tmp_path / "out") == [expected]
    assert stats.formats == {format: 1}
    assert (stats.rows_read, stats.kept, stats.train, stats.test, stats.turns) == (1, 1, 1, 0, len(expected))


def test_detection_precedence_and_override():
    both = {
        **chat("from messages"),
        "conversations": [],
        "instruction": "i",
        "prompt": "p",
        "completion": "c",
    }
    assert detect_format(both) == "messages"
    assert detect_format({"conversations": [], "instruction": "i", "output": "o"}) == "sharegpt"
    assert detect_format({"instruction": "i", "output": "o", "prompt": "p"}) == "alpaca"
    assert to_messages(both, "prompt_completion") == user_assistant("p", "c")
    with pytest.raises(RowError, match="record has no 'conversations' field"):
        to_messages(chat(), "sharegpt")


def test_format_override_through_prepare(tmp_path):
    rows = [{"prompt": "p", "completion": "c", **chat()}, chat()]
    stats = prepare(
        write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "out", format="prompt_completion", on_error="skip"
    )
    assert written(tmp_path / "out") == [user_assistant("p", "c")]
    assert stats.formats == {"prompt_completion": 1} and stats.rejected == 1
    [reject] = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["line"] == 2 and "no 'prompt'" in reject["reason"]


def test_real_sharegpt_file(tmp_path):
    if not SHAREGPT_FILE.exists():
        pytest.skip(
            f"third-party sample data not found at {SHAREGPT_FILE} (a shared/ checkout next to the repo)"
        )
    source = json.loads(SHAREGPT_FILE.read_text(encoding="utf-8"))
    stats = prepare(SHAREGPT_FILE, tmp_path / "out")
    assert (stats.rows_read, stats.rejected, stats.train, stats.test) == (500, 0, 400, 100)
    assert stats.formats == {"sharegpt": 500} and stats.turns == 2000
    expected = [
        [
            {"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
            for t in conv["conversations"]
        ]
        for conv in source
    ]
    assert sorted(map(json.dumps, written(tmp_path / "out"))) == sorted(map(json.dumps, expected))


# --- bad rows --------------------------------------------------------------------------------

USER = {"role": "user", "content": "Hi?"}
ASSISTANT = {"role": "assistant", "content": "Hello."}
BAD_ROWS = {
    "invalid JSON": ('{"messages": [', "invalid JSON"),
    "invalid UTF-8": (b'{"prompt": "caf\xe9", "completion": "x"}', "invalid UTF-8 at byte 16"),
    "not an object": ("[1, 2]", "record is not a JSON object (got list)"),
    "messages not a list": ({"messages": "Hi?"}, "'messages' is not a list (got str)"),
    "messages empty": ({"messages": []}, "'messages' is empty"),
    "conversations missing": ({"conversations": None}, "'conversations' is not a list (got null)"),
    "turn not an object": ({"messages": ["Hi?", ASSISTANT]}, "messages[0] is not an object"),
    "unknown role": (
        {"messages": [{"role": "bot", "content": "x"}, ASSISTANT]},
        "messages[0]: unknown role 'bot'",
    ),
    "missing role": ({"messages": [{"content": "x"}, ASSISTANT]}, "messages[0] has no 'role' field"),
    "unknown speaker": (
        {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
        "conversations[0]: unknown speaker 'robot'",
    ),
    "non-string content": (
        {"messages": [USER, {"role": "assistant", "content": 5}]},
        "messages[1] content is not a string",
    ),
    "empty content": (
        {"messages": [USER, {"role": "assistant", "content": " \n"}]},
        "messages[1] content is empty",
    ),
    "lone surrogate": ('{"prompt": "\\ud800", "completion": "x"}', "prompt is not valid Unicode"),
    "no assistant turn": ({"messages": [{"role": "system", "content": "s"}, USER]}, "no assistant turn"),
    "alpaca without output": ({"instruction": "Do it.", "input": ""}, "alpaca record has no 'output' field"),
    "prompt without completion": ({"prompt": "Hi?"}, "prompt_completion record has no 'completion' field"),
    "no known format": (
        {"text": "Hi", "label": 1},
        "no known format (messages, sharegpt, alpaca, prompt_completion)",
    ),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_fails_naming_file_line_and_reason(tmp_path, case):
    bad, reason = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "d.jsonl", [chat(), "", bad, chat("Other?")])
    with pytest.raises(DataError) as err:
        prepare(path, tmp_path / "out")
    assert str(err.value).startswith(f"{path} line 3: {reason}")
    assert "set data.on_error=skip" in str(err.value)
    assert not (tmp_path / "out" / "train.jsonl").exists()


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_is_skipped_and_listed(tmp_path, case):
    bad, reason = BAD_ROWS[case]
    path = write_jsonl(tmp_path / "d.jsonl", [chat(), "", bad, chat("Other?")])
    stats = prepare(path, tmp_path / "out", on_error="skip")
    [reject] = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["source"] == str(path) and reject["line"] == 3 and reject["reason"].startswith(reason)
    expected_raw = as_line(bad).decode("utf-8", "backslashreplace")
    assert reject["raw"] == expected_raw
    assert (stats.rows_read, stats.rejected, stats.kept) == (3, 1, 2)
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["rejected"] == 1


def test_bad_records_in_json_array_are_numbered_records(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([chat(), {"messages": [USER]}, "text", chat("Other?")]))
    with pytest.raises(DataError, match=r"d\.json record 2: no assistant turn"):
        prepare(path, tmp_path / "out")
    stats = prepare(path, tmp_path / "out", on_error="skip")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["record"], r["raw"]) for r in rejects] == [(2, {"messages": [USER]}), (3, "text")]
    assert (stats.rows_read, stats.rejected, stats.kept) == (4, 2, 2)


def test_every_row_rejected_is_an_error_after_writing_rejects(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER]}, "oops"])
    with pytest.raises(DataError, match="every row was rejected"):
        prepare(path, tmp_path / "out", on_error="skip")
    assert [r["line"] for r in read_jsonl(tmp_path / "out" / "rejects.jsonl")] == [1, 2]
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_unreadable_json_array_is_an_error(tmp_path):
    (tmp_path / "d.json").write_text('[{"messages": []},')
    with pytest.raises(DataError, match="not a valid JSON array"):
        prepare(tmp_path / "d.json", tmp_path / "out", on_error="skip")


# --- valid edge cases ------------------------------------------------------------------------


def test_bom_crlf_blank_lines_keep_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps(chat("One?")),
        "",
        json.dumps(chat("Two?")),
        "  ",
        json.dumps({"messages": [USER]}),
        "",
        "",
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    stats = prepare(path, tmp_path / "out", on_error="skip")
    assert [r["line"] for r in read_jsonl(tmp_path / "out" / "rejects.jsonl")] == [5]
    assert (stats.rows_read, stats.kept) == (3, 2)
    assert sorted(m[0]["content"] for m in written(tmp_path / "out")) == ["One?", "Two?"]


def test_unicode_system_turns_and_multi_turn_are_kept_verbatim(tmp_path):
    long_chat = {
        "messages": [
            {"role": "system", "content": "Réponds en français 🇫🇷"},
            {"role": "user", "content": "你好\u2028שלום"},
            {"role": "assistant", "content": "مرحبا 👋\n\tok"},
            {"role": "user", "content": "Ещё?"},
            {"role": "assistant", "content": "Да."},
        ]
    }
    stats = prepare(write_jsonl(tmp_path / "d.jsonl", [long_chat, chat()]), tmp_path / "out", test_size=0.5)
    out = tmp_path / "out"
    assert sorted(written(out), key=len) == [chat()["messages"], long_chat["messages"]]
    assert stats.turns == 7
    text = (out / "train.jsonl").read_bytes() + (out / "test.jsonl").read_bytes()
    assert "👋".encode() in text and b"\r" not in text
    assert all(
        len(f.read_text(encoding="utf-8").split("\n")) == 2 for f in (out / "train.jsonl", out / "test.jsonl")
    )


# --- sources ---------------------------------------------------------------------------------


def empty_sources(tmp: Path) -> dict[str, Path]:
    (tmp / "empty.jsonl").write_bytes(b"")
    (tmp / "blank.jsonl").write_bytes(b"\xef\xbb\xbf\n\r\n  \n")
    (tmp / "array.json").write_text("[]")
    (tmp / "header.csv").write_text("prompt,completion\n")
    (tmp / "nothing.csv").write_text("")
    (tmp / "empty_dir").mkdir()
    (tmp / "other_dir").mkdir()
    (tmp / "other_dir" / "notes.txt").write_text("not data")
    (tmp / "data.txt").write_text("not data")
    return {p.name: p for p in tmp.iterdir()} | {"missing": tmp / "missing.jsonl"}


@pytest.mark.parametrize(
    "name,message",
    [
        ("empty.jsonl", "no rows to prepare"),
        ("blank.jsonl", "no rows to prepare"),
        ("array.json", "no rows to prepare"),
        ("header.csv", "no rows to prepare"),
        ("nothing.csv", "no rows to prepare"),
        ("empty_dir", "no .jsonl, .json, .parquet, .csv files in this directory"),
        ("other_dir", "no .jsonl, .json, .parquet, .csv files in this directory"),
        ("data.txt", "unsupported file type"),
        ("missing", "no such file or directory"),
    ],
)
def test_empty_or_missing_source_is_an_error(tmp_path, name, message):
    (tmp_path / "src").mkdir()
    source = empty_sources(tmp_path / "src")[name]
    with pytest.raises(DataError, match=message) as err:
        prepare(source, tmp_path / "out", on_error="skip")
    assert str(source) in str(err.value)


def test_directory_of_mixed_files_in_name_order(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "b.jsonl", [chat("b1?"), {"messages": [USER]}])
    (src / "a.json").write_text(json.dumps([{"instruction": "a1", "output": "o"}]))
    pd.DataFrame([{"prompt": "c1", "completion": "o"}, {"prompt": "c2"}]).to_csv(src / "c.csv", index=False)
    pq.write_table(pa.Table.from_pylist([chat("d1?")]), src / "d.parquet")
    (src / "README.md").write_text("ignored")
    assert [Path(row.path).name for row in read_rows(src)] == [
        "a.json",
        *["b.jsonl"] * 2,
        *["c.csv"] * 2,
        "d.parquet",
    ]
    stats = prepare(src, tmp_path / "out", on_error="skip", test_size=0.01)
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(Path(r["source"]).name, r.get("line") or r.get("record")) for r in rejects] == [
        ("b.jsonl", 2),
        ("c.csv", 3),  # the file line: the header is line 1
    ]
    assert stats.formats == {"alpaca": 1, "messages": 2, "prompt_completion": 1}
    assert sorted(m[0]["content"] for m in written(tmp_path / "out")) == ["a1", "b1?", "c1", "d1?"]


def test_parquet_with_nested_messages_and_nulls(tmp_path):
    rows = [
        {"prompt": "Hi?", **chat(), "instruction": None, "output": None},
        {"prompt": None, "messages": None, "instruction": "Say hi.", "output": "Hi"},
        {"prompt": None, "messages": None, "instruction": "Say hi.", "output": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    stats = prepare(tmp_path / "d.parquet", tmp_path / "out", on_error="skip")
    assert stats.formats == {"messages": 1, "alpaca": 1}
    [reject] = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["record"] == 3 and reject["reason"] == "alpaca record has no 'output' field"
    assert reject["raw"] == rows[2]
    expected = [chat()["messages"], user_assistant("Say hi.", "Hi")]
    assert sorted(written(tmp_path / "out"), key=json.dumps) == sorted(expected, key=json.dumps)


def test_csv_messages_column_holds_json(tmp_path):
    frame = pd.DataFrame(
        [
            {"prompt": "Hi?", "messages": json.dumps(chat()["messages"]), "id": "007"},
            {"prompt": "x", "messages": "[not json", "id": "008"},
        ]
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    stats = prepare(tmp_path / "d.csv", tmp_path / "out", on_error="skip")
    assert written(tmp_path / "out") == [chat()["messages"]] and stats.formats == {"messages": 1}
    [reject] = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["line"] == 3 and reject["reason"].startswith("'messages' is not valid JSON")
    assert reject["raw"] == {"prompt": "x", "messages": "[not json", "id": "008"}
    with pytest.raises(DataError, match=r"d\.csv line 3: 'messages' is not valid JSON"):
        prepare(tmp_path / "d.csv", tmp_path / "out")


def test_csv_rows_are_named_by_the_file_line_they_start_on_and_empty_cells_are_empty(tmp_path):
    # Quoted cells spanning lines: the 4th record starts on line 10, its completion cell is empty.
    path = tmp_path / "d.csv"
    path.write_text(
        'prompt,completion\n"line one\nline two\nline three",ok 1\np2,"multi\nline\nanswer"\n'
        '"p3\nmore",ok 3\np4,\n\np5,ok 5\np6,ok,extra\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"d\.csv line 10: completion is empty \(set data.on_error=skip"):
        prepare(path, tmp_path / "out")
    stats = prepare(path, tmp_path / "out", on_error="skip")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (10, "completion is empty"),
        (13, "3 cells, but the header has 2 (prompt, completion)"),  # line 11 is blank
    ]
    assert rejects[1]["raw"] == ["p6", "ok", "extra"]
    assert (stats.rows_read, stats.kept) == (6, 4)
    assert sorted(m[1]["content"] for m in written(tmp_path / "out")) == [
        "multi\nline\nanswer",
        "ok 1",
        "ok 3",
        "ok 5",
    ]


def test_a_csv_table_mixing_formats_detects_each_row_by_its_filled_cells(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "instruction,output,prompt,completion,messages\nSay hi.,Hi,,,\n,,2+2?,4,\n", encoding="utf-8"
    )
    stats = prepare(path, tmp_path / "out", test_size=0.5)
    assert stats.formats == {"alpaca": 1, "prompt_completion": 1}


def test_json_file_may_hold_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.json", [chat(), "{bad"])
    with pytest.raises(DataError, match=r"d\.json line 2: invalid JSON"):
        prepare(path, tmp_path / "out")


# --- split, eval_source, dedupe, outputs -----------------------------------------------------


def numbered(n: int) -> list[dict]:
    return [chat(f"Question {i}?", f"Answer {i}.") for i in range(n)]


def test_split_is_reproducible_for_a_seed(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", numbered(50))
    outputs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        stats = prepare(path, tmp_path / name, seed=seed, test_size=0.2)
        assert (stats.train, stats.test) == (40, 10)
        outputs[name] = [
            (tmp_path / name / f).read_bytes() for f in ("train.jsonl", "test.jsonl", "stats.json")
        ]
    assert outputs["a"] == outputs["b"]
    assert outputs["a"][1] != outputs["c"][1]
    assert sorted(map(json.dumps, written(tmp_path / "a"))) == sorted(
        json.dumps(r["messages"]) for r in numbered(50)
    )


@pytest.mark.parametrize(
    "n,test_size,expected", [(2, 0.2, (1, 1)), (1, 0.2, (1, 0)), (10, 0.99, (1, 9)), (7, 0.5, (3, 4))]
)
def test_split_sizes(tmp_path, n, test_size, expected):
    stats = prepare(write_jsonl(tmp_path / "d.jsonl", numbered(n)), tmp_path / "out", test_size=test_size)
    assert (stats.train, stats.test) == expected


def test_eval_source_is_the_test_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", numbered(5))
    evals = write_jsonl(tmp_path / "eval.jsonl", [chat("Eval?")])
    stats = prepare(train, tmp_path / "out", eval_source=evals)
    assert (stats.rows_read, stats.train, stats.test) == (6, 5, 1)
    assert read_jsonl(tmp_path / "out" / "test.jsonl") == [chat("Eval?")]
    assert read_jsonl(tmp_path / "out" / "train.jsonl") == numbered(5)
    write_jsonl(evals, [chat("Eval?"), {"messages": [USER]}])
    with pytest.raises(DataError, match=r"eval\.jsonl line 2: no assistant turn"):
        prepare(train, tmp_path / "out", eval_source=evals)
    write_jsonl(evals, [{"messages": [USER]}])
    with pytest.raises(DataError, match=r"eval\.jsonl: every row was rejected"):
        prepare(train, tmp_path / "out", eval_source=evals, on_error="skip")


def test_dedupe_removes_and_counts_exact_duplicates(tmp_path):
    rows = [
        *numbered(3),
        numbered(1)[0],
        {"conversations": [{"from": "human", "value": "Question 2?"}, {"from": "gpt", "value": "Answer 2."}]},
    ]
    evals = write_jsonl(tmp_path / "eval.jsonl", [numbered(2)[1], chat("Eval?"), chat("Eval?")])
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    stats = prepare(path, tmp_path / "out", eval_source=evals, dedupe=True)
    # Rows 4 and 5 repeat rows 1 and 3 once normalised, row 2 repeats an eval row, eval repeats itself.
    assert (stats.rows_read, stats.duplicates, stats.duplicates_removed, stats.train, stats.test) == (
        8,
        4,
        4,
        2,
        2,
    )
    assert stats.rows_read == stats.kept + stats.rejected + stats.duplicates_removed
    assert [m[0]["content"] for m in written(tmp_path / "out")] == [
        "Question 0?",
        "Question 2?",
        "Question 1?",
        "Eval?",
    ]
    # Without dedupe the copies stay, except a train row that repeats a held-out one.
    stats = prepare(path, tmp_path / "out", eval_source=evals)
    assert (stats.duplicates, stats.duplicates_removed, stats.train, stats.test) == (4, 1, 4, 3)
    assert numbered(2)[1] not in read_jsonl(tmp_path / "out" / "train.jsonl")
    with pytest.raises(DataError, match="every row repeats an eval_source row"):
        prepare(evals, tmp_path / "out", eval_source=evals, dedupe=True)


def test_outputs_and_stats_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [*numbered(4), "bad"])
    stats = prepare(path, tmp_path / "out", on_error="skip", test_size=0.25)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "rejects.jsonl",
        "stats.json",
        "test.jsonl",
        "train.jsonl",
    ]
    assert json.loads((out / "stats.json").read_text()) == asdict(stats)
    assert asdict(stats) == {
        "rows_read": 5,
        "kept": 4,
        "rejected": 1,
        "duplicates": 0,
        "duplicates_removed": 0,
        "special_token_text": 0,
        "unreadable_links": [],
        "train": 3,
        "test": 1,
        "formats": {"messages": 4},
        "turns": 8,
        "over_max_turns": 0,
        # No tokenizer given: no length policy and no token counts.
        "max_length": None,
        "length_policy": None,
        "over_max_length": 0,
        "clipped_rows": 0,
        "truncated_turns": 0,
        "cut_at_max_length": 0,
        "dropped_too_long": 0,
        "tokens": {},
    }
    assert all(set(row) == {"messages"} for row in read_jsonl(out / "train.jsonl"))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"on_error": "ignore"}, "not a valid OnError"),
        ({"format": "csv"}, "not a valid DataFormat"),
        ({"test_size": 0}, "test_size"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare(write_jsonl(tmp_path / "d.jsonl", [chat()]), tmp_path / "out", **kwargs)
