"""Where chat records come from: local files, or a dataset on the Hugging Face hub.

Every record is yielded as a `Row` that knows its origin (file and 1-based line for JSON lines and
CSV, 1-based record index otherwise, `dataset[split]` and index for hub datasets), so a bad record is
reported where a person can find it. Local sources are `.jsonl`, `.json` (an array of records,
or JSON lines), `.parquet` and `.csv` files, or a directory of them read in name order.
A hub source is anything `datasets.load_dataset` accepts with a split expression
(`HuggingFaceH4/ultrachat_200k` with `train_sft[:1%]`), including a local folder in the hub's
layout (`data/<split>-00000-of-00001.parquet`), which is how it is tested offline.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from train.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
BOM = b"\xef\xbb\xbf"
# CSV cells cannot hold lists, so these columns arrive as JSON text.
JSON_COLUMNS = ("messages", "conversations")


@dataclass(frozen=True)
class Row:
    """One record as read, with where it came from; `error` is set when it could not be parsed."""

    path: str
    unit: str  # "line" (1-based line a JSON lines or CSV record starts on) or "record" (1-based index)
    number: int
    raw: Any  # the line's text or the record as read, kept for rejects.jsonl
    record: Any = None
    error: str | None = None

    @property
    def location(self) -> str:
        return f"{self.path} {self.unit} {self.number}"


def source_files(source: str | Path) -> list[Path]:
    """The data files of a source: the file itself, or a directory's data files in name order."""
    return listed_files(source)[0]


def listed_files(source: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The data files of a source, and the links in its directory that cannot be followed (each
    with why): `is_file()` is simply False for those, so without this they would vanish unseen."""
    path = Path(source)
    if path.is_dir():
        entries = sorted(path.iterdir())
        files = [p for p in entries if p.is_file() and p.suffix.lower() in SUFFIXES]
        unreadable = [(p, why) for p in entries if (why := broken_link(p))]
        if not files:
            links = "".join(f"; {p.name} is {why}" for p, why in unreadable)
            raise DataError(f"{path}: no {', '.join(SUFFIXES)} files in this directory{links}")
        return files, unreadable
    if why := broken_link(path):
        raise DataError(f"{path}: {why}")
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type (expected {', '.join(SUFFIXES)} or a directory)")
    return [path], []


def broken_link(path: Path) -> str | None:
    """Why a symbolic link cannot be followed (dangling or looping), or None for anything else."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return f"a dangling link (to {os.readlink(path)}, which does not exist)"
    except (RuntimeError, OSError) as e:  # a loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        return f"a link that cannot be followed ({e})"
    return None


@dataclass(frozen=True)
class Source:
    """One data source: local files, or a hub dataset id (or hub-layout folder) with a split."""

    location: str
    hub_config: str | None = None
    split: str | None = None  # hub only; "train" when not given

    @property
    def is_local_files(self) -> bool:
        """A data file, or a directory holding data files directly (not a hub-layout folder)."""
        path = Path(self.location)
        if path.is_file() or (not path.exists() and path.suffix.lower() in SUFFIXES):
            return True
        if not path.is_dir():
            return False
        entries = list(path.iterdir())
        if any(p.is_file() and p.suffix.lower() in SUFFIXES for p in entries):
            return True
        # A hub-layout folder has a data/ subfolder or a dataset card; anything else (an empty
        # folder, say) is a local source, reported as such.
        return not any(p.is_dir() or p.name == "README.md" for p in entries)

    def open(self) -> OpenedSource:
        """Resolve the source: list local files, or load the hub split (cached by `datasets`)."""
        if self.is_local_files:
            files, unreadable = listed_files(self.location)
            return OpenedSource(self.location, files_fingerprint(files), files=files, unreadable=unreadable)
        return _open_hub(self)


@dataclass(frozen=True)
class OpenedSource:
    """A resolved source: its rows can be read, and its fingerprint changes when its content does."""

    label: str
    fingerprint: str
    files: list[Path] | None = None
    dataset: Any = None  # a datasets.Dataset for hub sources
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # links in the folder, and why

    def rows(self) -> Iterator[Row]:
        if self.files is not None:
            for path in self.files:
                yield from _READERS[path.suffix.lower()](path)
        else:
            for number, record in enumerate(self.dataset, 1):
                yield Row(self.label, "record", number, record, record)


def _open_hub(source: Source) -> OpenedSource:
    from datasets import load_dataset  # heavy; local files do not need it

    split = source.split or "train"
    label = f"{source.location}[{split}]"
    try:
        dataset = load_dataset(source.location, source.hub_config, split=split)
    except Exception as e:  # network, unknown id, bad split expression: all need the user
        raise DataError(
            f"{label}: cannot load this dataset ({type(e).__name__}: {e}). A hub source is a dataset id "
            "(or a folder in the hub's layout) with data.split; a local source is a "
            f"{', '.join(SUFFIXES)} file or a directory of them. Offline, set HF_HUB_OFFLINE=1 and make "
            "sure the dataset is in the Hugging Face cache."
        ) from None
    # `datasets` fingerprints the loaded data (files and split), so a changed dataset or split
    # expression gives a new fingerprint.
    return OpenedSource(label, f"hub:{label}:{dataset._fingerprint}", dataset=dataset)


def files_fingerprint(files: list[Path]) -> str:
    """A hash of the files' names and bytes: any edit to the data changes it."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def read_rows(source: str | Path | Source) -> Iterator[Row]:
    """Every non-blank row of a source, in order, with its location."""
    if not isinstance(source, Source):
        source = Source(str(source))
    yield from source.open().rows()


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
    """Records numbered by the file line they start on (a quoted cell may span lines; the header is
    line 1). Cells stay text: "007" is not 7, and an empty cell is an empty string, so a required
    one is reported as empty rather than missing. A byte that is not UTF-8 makes its own record a
    bad row (named by the line it starts on), not the whole file: the file is decoded with
    `surrogateescape`, which keeps such a byte as a marker that `_csv_row` finds."""
    # csv caps a cell at 131,072 characters; a longer reply is the length policy's business (the
    # per-message character budget bounds the work), not a reason to reject the file.
    previous_limit = csv.field_size_limit(sys.maxsize)
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f)
            try:
                header = next(reader, None)
                if header and (bad := _undecodable(header)):
                    raise DataError(f"{path} line 1: the header is not UTF-8 ({bad}); save the file as UTF-8")
                start = reader.line_num + 1
                for cells in reader:
                    if cells:  # not a blank line
                        yield _csv_row(path, start, header, cells)
                    start = reader.line_num + 1
            except csv.Error as e:
                raise DataError(f"{path} line {start}: cannot read this CSV file ({e})") from None
    finally:
        csv.field_size_limit(previous_limit)


def _undecodable(cells: list[str]) -> str | None:
    """Where the first byte that was not UTF-8 is, or None (it arrives as a lone surrogate)."""
    for column, cell in enumerate(cells, 1):
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError as e:
            byte = ord(cell[e.start]) - 0xDC00
            return f"byte 0x{byte:02x} at character {e.start + 1} of column {column}"
    return None


def _csv_row(path: Path, line: int, header: list[str], cells: list[str]) -> Row:
    if bad := _undecodable(cells):
        # The row as it was, with the bad bytes written as \xNN, for rejects.jsonl.
        raw = [c.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for c in cells]
        return Row(str(path), "line", line, raw, error=f"invalid UTF-8: {bad}")
    if len(cells) != len(header):
        error = f"{len(cells)} cells, but the header has {len(header)} ({', '.join(header)})"
        return Row(str(path), "line", line, cells, error=error)
    record = dict(zip(header, cells))
    return _parse_json_columns(Row(str(path), "line", line, dict(record), record))


def _table_rows(path: Path, records: list[dict]) -> Iterator[Row]:
    # A column is shared by every row of a table: a null there means the row lacks that field.
    for number, raw in enumerate(records, 1):
        yield Row(str(path), "record", number, raw, {k: v for k, v in raw.items() if v is not None})


def _parse_json_columns(row: Row) -> Row:
    for key in JSON_COLUMNS:
        if row.record.get(key):  # an empty cell stays "" (a table's other formats leave it empty)
            try:
                row.record[key] = json.loads(row.record[key])
            except json.JSONDecodeError as e:
                return replace(row, error=f"{key!r} is not valid JSON ({e.msg})")
    return row


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
