"""Check, convert and split a local chat dataset into the train/test files that training reads.

A bad row found mid-training costs hours, and a bad row silently trained on costs quality, so
every row is validated up front and reported by file and line (or record): `on_error="fail"`
stops at the first bad row with a message naming it; `on_error="skip"` keeps going and lists
each rejected row, with its reason and original text, in `rejects.jsonl`. Nothing is dropped
without being counted in `stats.json`.

Sources are `.jsonl`, `.json` (an array of records, or JSON lines), `.parquet` and `.csv` files,
or a directory of them read in name order; records may be in any format `train.formats` knows.
The outputs are `{"messages": [...]}` JSON lines in ultrachat's schema, split reproducibly:
the same input and seed give byte-identical files.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from train.formats import FORMATS, Messages, RowError, detect_format, to_messages

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SKIP_HINT = "set data.on_error=skip to skip bad rows and list them in rejects.jsonl"
BOM = b"\xef\xbb\xbf"
# CSV cells cannot hold lists, so these columns arrive as JSON text.
JSON_COLUMNS = ("messages", "conversations")


class DataError(ValueError):
    """The data cannot be prepared; the message names the file, the row and what to do."""


@dataclass(frozen=True)
class Row:
    """One record as read, with where it came from; `error` is set when it could not be parsed."""

    path: str
    unit: str  # "line" (1-based line of a JSON lines file) or "record" (1-based index in a file)
    number: int
    raw: Any  # the line's text or the record as read, kept for rejects.jsonl
    record: Any = None
    error: str | None = None

    @property
    def location(self) -> str:
        return f"{self.path} {self.unit} {self.number}"


@dataclass
class PrepareStats:
    """What `prepare` did; rows_read == kept + rejected + duplicates_removed."""

    rows_read: int = 0  # non-blank rows, in source and eval_source together
    kept: int = 0  # train + test
    rejected: int = 0
    duplicates_removed: int = 0
    train: int = 0
    test: int = 0
    formats: dict[str, int] = field(default_factory=dict)  # valid rows per format, before dedupe
    turns: int = 0  # messages in the kept rows


def source_files(source: str | Path) -> list[Path]:
    """The data files of a source: the file itself, or a directory's data files in name order."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{path}: no {', '.join(SUFFIXES)} files in this directory")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)} or a directory)")
    return [path]


def read_rows(source: str | Path) -> Iterator[Row]:
    """Every non-blank row of a source, in order, with its location."""
    for path in source_files(source):
        yield from _READERS[path.suffix.lower()](path)


def _read_jsonl(path: Path) -> Iterator[Row]:
    # Bytes, split on b"\n" only: a bad line then costs only that line, and U+2028 inside a
    # string (which str.splitlines would split on) is left alone.
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if number == 1:
                line = line.removeprefix(BOM)
            if line.strip():
                yield _parse_line(str(path), number, line)


def _parse_line(path: str, number: int, line: bytes) -> Row:
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raw = line.decode("utf-8", "backslashreplace").rstrip("\r\n")
        return Row(path, "line", number, raw, error=f"invalid UTF-8 at byte {e.start + 1} of the line")
    try:
        return Row(path, "line", number, text, json.loads(text))
    except json.JSONDecodeError as e:
        return Row(path, "line", number, text, error=f"invalid JSON ({e.msg} at column {e.colno})")


def _read_json(path: Path) -> Iterator[Row]:
    data = path.read_bytes().removeprefix(BOM)
    if not data.lstrip().startswith(b"["):
        yield from _read_jsonl(path)
        return
    try:
        records = json.loads(data)
    except ValueError as e:  # JSONDecodeError or UnicodeDecodeError: the array has no usable rows
        raise DataError(f"{path}: not a valid JSON array ({e})") from None
    for number, record in enumerate(records, 1):
        yield Row(str(path), "record", number, record, record)


def _read_parquet(path: Path) -> Iterator[Row]:
    try:
        records = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read this Parquet file ({e})") from None
    yield from _table_rows(path, records)


def _read_csv(path: Path) -> Iterator[Row]:
    try:
        # Text stays text ("007" is not 7); only an empty cell is missing.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read this CSV file ({e})") from None
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for row in _table_rows(path, records):
        yield _parse_json_columns(row)


def _table_rows(path: Path, records: list[dict]) -> Iterator[Row]:
    # A column is shared by every row of a table: a null there means the row lacks that field.
    for number, raw in enumerate(records, 1):
        yield Row(str(path), "record", number, raw, {k: v for k, v in raw.items() if v is not None})


def _parse_json_columns(row: Row) -> Row:
    for key in JSON_COLUMNS:
        if isinstance(row.record.get(key), str):
            try:
                row.record[key] = json.loads(row.record[key])
            except json.JSONDecodeError as e:
                return replace(row, error=f"{key!r} is not valid JSON ({e.msg})")
    return row


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}


def prepare(
    source: str | Path,
    output_dir: str | Path,
    *,
    format: str | None = None,
    on_error: str = "fail",
    test_size: float = 0.2,
    eval_source: str | Path | None = None,
    seed: int = 0,
    dedupe: bool = False,
) -> PrepareStats:
    """Validate `source`, convert it to `messages`, split it, and write the results to `output_dir`.

    Writes train.jsonl, test.jsonl, rejects.jsonl and stats.json. `format` forces one format
    instead of detecting it per record. With `eval_source`, that source is the test split and
    nothing is split off `source`; otherwise a `test_size` fraction (at least one row when there
    are two or more) is chosen at random from `seed`. `dedupe` drops exact repeats of a
    conversation, keeping the first; a train row that repeats a test row is dropped too.
    Raises DataError for a bad row (when on_error="fail"), an empty source, or a source whose
    rows were all rejected.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if eval_source is None and not 0 < test_size < 1:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), not {test_size}")
    out = Path(output_dir)
    stats = PrepareStats()
    rejects: list[dict] = []
    train = _validate(source, format, on_error, stats, rejects)
    test = _validate(eval_source, format, on_error, stats, rejects) if eval_source is not None else []

    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "rejects.jsonl", rejects)
    for src, conversations in ((source, train), (eval_source, test)):
        if src is not None and not conversations:
            raise DataError(f"{src}: every row was rejected; the reasons are in {out / 'rejects.jsonl'}")

    if dedupe:
        seen: set[str] = set()
        test = _dedupe(test, seen)
        train = _dedupe(train, seen)
        if not train:
            raise DataError(f"{source}: every row repeats an eval_source row; nothing is left to train on")
    if eval_source is None:
        train, test = split(train, test_size, seed)

    stats.train, stats.test = len(train), len(test)
    stats.kept = stats.train + stats.test
    stats.duplicates_removed = stats.rows_read - stats.rejected - stats.kept
    stats.turns = sum(len(messages) for messages in train + test)
    _write_jsonl(out / "train.jsonl", [{"messages": m} for m in train])
    _write_jsonl(out / "test.jsonl", [{"messages": m} for m in test])
    (out / "stats.json").write_text(json.dumps(asdict(stats), indent=2) + "\n", encoding="utf-8")
    log.info("prepared %s into %s: %s", source, out, stats)
    return stats


def _validate(
    source: str | Path, format: str | None, on_error: str, stats: PrepareStats, rejects: list[dict]
) -> list[Messages]:
    """The source's valid conversations; bad rows raise (fail) or are appended to `rejects` (skip)."""
    conversations = []
    read = 0
    for row in read_rows(source):
        read += 1
        try:
            if row.error:
                raise RowError(row.error)
            name = format or detect_format(row.record)
            conversations.append(to_messages(row.record, name))
        except RowError as e:
            if on_error == "fail":
                raise DataError(f"{row.location}: {e} ({SKIP_HINT})") from None
            rejects.append({"source": row.path, row.unit: row.number, "reason": str(e), "raw": row.raw})
            continue
        stats.formats[name] = stats.formats.get(name, 0) + 1
    if not read:
        raise DataError(f"{source}: no rows to prepare (the data is empty)")
    stats.rows_read += read
    stats.rejected += read - len(conversations)
    return conversations


def _dedupe(conversations: list[Messages], seen: set[str]) -> list[Messages]:
    kept = []
    for messages in conversations:
        key = json.dumps(messages, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(messages)
    return kept


def split(conversations: list[Messages], test_size: float, seed: int) -> tuple[list, list]:
    """(train, test), each in input order; the test rows are a random sample drawn from `seed`."""
    n = len(conversations)
    n_test = min(max(1, round(n * test_size)), n - 1) if n >= 2 else 0
    test_ids = set(random.Random(seed).sample(range(n), n_test))
    train = [m for i, m in enumerate(conversations) if i not in test_ids]
    test = [m for i, m in enumerate(conversations) if i in test_ids]
    return train, test


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    # A rejected row may hold a lone surrogate; backslashreplace writes it as the JSON escape it came from.
    with path.open("w", encoding="utf-8", newline="\n", errors="backslashreplace") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
