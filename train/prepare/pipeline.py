"""Check, convert, length-limit and split a chat dataset into the files that training reads.

A bad row found mid-training costs hours, and a bad row silently trained on costs quality, so
every row is validated up front and reported by file and line (or record): `on_error="fail"`
stops at the first bad row with a message naming it; `on_error="skip"` keeps going and lists
each rejected row, with its reason and original text, in `rejects.jsonl`. Conversations longer
than `max_length` tokens are handled by an explicit policy (`truncate` at a turn boundary, or
`drop`), and listed too. Nothing leaves without being counted in `stats.json`:
rows_read == kept + rejected + duplicates_removed + dropped_too_long.

Outputs in `output_dir`:
- train.jsonl, test.jsonl: `{"messages": [...]}` in ultrachat's schema, split reproducibly
  (the same input and seed give byte-identical files);
- train.tokens.parquet, test.tokens.parquet (when a tokenizer is given): the same rows as
  `input_ids` and `labels` exactly as the trainer uses them, so training does not tokenize again;
- rejects.jsonl, stats.json.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from train.config import DataFormat, LengthPolicy, OnError
from train.prepare.formats import Messages, RowError, detect_format, to_messages
from train.prepare.formats import merge_system_into_first_user as merge_system
from train.prepare.sources import DataError, OpenedSource, Source
from train.prepare.tokens import IGNORE_INDEX, MARGIN_TOKENS, ChatTokenizer, Encoded, clip_messages

log = logging.getLogger(__name__)

SKIP_HINT = "set data.on_error=skip to skip bad rows and list them in rejects.jsonl"


@dataclass
class PrepareStats:
    """What `prepare` did; rows_read == kept + rejected + duplicates_removed + dropped_too_long."""

    rows_read: int = 0  # non-blank rows, in source and eval_source together
    kept: int = 0  # train + test
    rejected: int = 0  # bad rows (see rejects.jsonl)
    # Rows whose conversation repeats an earlier valid row, in source and eval_source together (found
    # whether or not data.dedupe removes them: copies are kept on one side of the split).
    duplicates: int = 0
    # With data.dedupe: every repeat; always: a train row that repeats a held-out one.
    duplicates_removed: int = 0
    special_token_text: int = 0  # rows with a special token's text in a message (rejected)
    # Links in a source folder that lead nowhere (dangling) or round in a circle (a loop).
    unreadable_links: list[str] = field(default_factory=list)
    train: int = 0
    test: int = 0
    formats: dict[str, int] = field(default_factory=dict)  # valid rows per format, before dedupe
    turns: int = 0  # messages in the kept rows
    over_max_turns: int = 0  # rows of more than max_turns messages (rejected, in rejects.jsonl)
    # Length policy (only with a tokenizer and max_length).
    max_length: int | None = None
    length_policy: LengthPolicy | None = None
    over_max_length: int = 0  # conversations longer than max_length, before the policy
    # A message over (max_length + 64) x the longest token's characters cannot fit: clipped there
    # before tokenizing (the policy then applies as to any long row; train.jsonl holds the clipped text).
    clipped_rows: int = 0
    truncated_turns: int = 0  # shortened to the longest run of whole turns that fits
    cut_at_max_length: int = 0  # first exchange alone too long: its tokens are cut at max_length
    dropped_too_long: int = 0  # listed in rejects.jsonl
    # Tokens per conversation as trained (after the policy): totals per split and percentiles.
    tokens: dict[str, int] = field(default_factory=dict)


@dataclass
class Item:
    """A valid conversation, where it came from, and (with a tokenizer) its ids and labels."""

    origin: dict
    messages: Messages
    encoded: Encoded | None = None

    @property
    def location(self) -> str:
        """`FILE line N` (or `record N`), as in error messages."""
        unit, number = next((k, v) for k, v in self.origin.items() if k != "source")
        return f"{self.origin['source']} {unit} {number}"


def _opened(source: str | Path | Source | OpenedSource) -> OpenedSource:
    if isinstance(source, OpenedSource):
        return source
    return (source if isinstance(source, Source) else Source(str(source))).open()


def prepare(
    source: str | Path | Source | OpenedSource,
    output_dir: str | Path,
    *,
    format: DataFormat | str | None = None,
    on_error: OnError | str = OnError.fail,
    test_size: float = 0.2,
    eval_source: str | Path | Source | OpenedSource | None = None,
    seed: int = 0,
    dedupe: bool = False,
    merge_system_into_first_user: bool = False,
    max_turns: int | None = None,
    tokenizer: ChatTokenizer | None = None,
    max_length: int | None = None,
    length_policy: LengthPolicy | str = LengthPolicy.truncate,
) -> PrepareStats:
    """Validate `source`, convert it to `messages`, apply the length policy, split, and write.

    `format` forces one format instead of detecting it per record. With `eval_source`, that
    source is the test split and nothing is split off `source`; otherwise a `test_size`
    fraction (at least one row when there are two or more) is chosen at random from `seed`, with
    every copy of a conversation on the same side; with `eval_source`, a train row that repeats a
    test row is dropped (counted in `duplicates_removed`). `dedupe` drops every exact repeat of a
    conversation, keeping the first. `merge_system_into_first_user` moves a leading system message's
    text into the first user message. A conversation of more than `max_turns` messages is a bad
    row (so the work per row is bounded). With a `tokenizer`, rows are tokenized as the trainer will
    see them and checked (every turn rendered, every reply trains its end of turn), and with
    `max_length` longer ones are truncated or dropped per `length_policy`.
    Raises DataError for a bad row (when on_error="fail"), an empty source, or a source with
    nothing left to train on.
    """
    # A name that is not a member raises ValueError ("'ignore' is not a valid OnError").
    on_error, length_policy = OnError(on_error), LengthPolicy(length_policy)
    format = DataFormat(format) if format is not None else None
    if eval_source is None and not 0 < test_size < 1:
        raise ValueError(f"test_size must be between 0 and 1 (exclusive), not {test_size}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = PrepareStats()
    rejects: list[dict] = []
    sources = [(_opened(source), "train")]
    if eval_source is not None:
        sources.append((_opened(eval_source), "test"))
    train, test = _read(
        sources, format, max_turns, merge_system_into_first_user, on_error, stats, rejects, out
    )
    label = sources[0][0].label

    stats.duplicates = _count_repeats(train + test)
    if dedupe:
        seen: set[str] = set()
        test = _dedupe(test, seen)
        train = _nonempty_train(_dedupe(train, seen), label)
    stats.duplicates_removed = stats.rows_read - stats.rejected - len(train) - len(test)

    if tokenizer is not None:
        tokenize = (tokenizer, max_length, length_policy, on_error, stats, rejects)
        train = _tokenize(train, *tokenize)
        test = _tokenize(test, *tokenize)
        if not train or (eval_source is not None and not test):
            _write_jsonl(out / "rejects.jsonl", rejects)
            raise DataError(
                f"{label}: every conversation is longer than max_length={max_length} tokens "
                f"(length_policy={length_policy}); raise sft.max_length or see {out / 'rejects.jsonl'}"
            )
    if eval_source is None:  # copies of a conversation stay together, on one side
        train, test = split(train, test_size, seed, key=_conversation_key)
    else:  # a train row that repeats a held-out one would make the held-out score measure recall
        held_out = {_conversation_key(item) for item in test}
        kept = [item for item in train if _conversation_key(item) not in held_out]
        stats.duplicates_removed += len(train) - len(kept)
        train = _nonempty_train(kept, label)
    _write_prepared(out, train, test, tokenizer is not None, stats, rejects)
    log.info("prepared %s into %s: %s", label, out, stats)
    return stats


def _read(sources, format, max_turns, merge_system_into_first_user, on_error, stats, rejects, out: Path):
    """The (train, test) items of the sources, validated; DataError when a source has none left."""
    for src, _ in sources:
        _unreadable_links(src, on_error, stats, rejects)
    items = {name: _validate(src, format, max_turns, on_error, stats, rejects) for src, name in sources}
    if merge_system_into_first_user:
        for item in items["train"] + items.get("test", []):
            item.messages = merge_system(item.messages)
    for src, name in sources:
        if not items[name]:
            _write_jsonl(out / "rejects.jsonl", rejects)
            raise DataError(
                f"{src.label}: every row was rejected; the reasons are in {out / 'rejects.jsonl'}"
            )
    return items["train"], items.get("test", [])


def _nonempty_train(train: list, label: str) -> list:
    if not train:
        raise DataError(f"{label}: every row repeats an eval_source row; nothing is left to train on")
    return train


def _write_prepared(out: Path, train: list, test: list, tokenized: bool, stats, rejects: list[dict]) -> None:
    """rejects.jsonl, each split's messages (and token ids when tokenized) and stats.json."""
    stats.train, stats.test = len(train), len(test)
    stats.kept = stats.train + stats.test
    stats.turns = sum(len(item.messages) for item in train + test)
    _write_jsonl(out / "rejects.jsonl", rejects)
    for name, part in (("train", train), ("test", test)):
        _write_jsonl(out / f"{name}.jsonl", [{"messages": item.messages} for item in part])
        if tokenized:
            _write_tokens(out / f"{name}.tokens.parquet", part)
    if tokenized:
        stats.tokens = _token_stats(train, test)
    (out / "stats.json").write_text(json.dumps(asdict(stats), indent=2) + "\n", encoding="utf-8")


def _validate(
    source: OpenedSource,
    format: DataFormat | None,
    max_turns: int | None,
    on_error: OnError,
    stats: PrepareStats,
    rejects: list[dict],
) -> list[Item]:
    """The source's valid conversations; bad rows raise (fail) or are appended to `rejects` (skip)."""
    items = []
    read = 0
    for row in source.rows():
        read += 1
        try:
            if row.error:
                raise RowError(row.error)
            name = format or detect_format(row.record)
            messages = to_messages(row.record, name)
            if max_turns and len(messages) > max_turns:
                stats.over_max_turns += 1
                raise RowError(
                    f"{len(messages)} messages, over data.max_turns={max_turns}: split the conversation "
                    "into shorter ones, or raise data.max_turns"
                )
            items.append(Item({"source": row.path, row.unit: row.number}, messages))
        except RowError as e:
            if on_error == OnError.fail:
                raise DataError(f"{row.location}: {e} ({SKIP_HINT})") from None
            rejects.append({"source": row.path, row.unit: row.number, "reason": str(e), "raw": row.raw})
            continue
        stats.formats[name] = stats.formats.get(name, 0) + 1
    if not read:
        raise DataError(f"{source.label}: no rows to prepare (the data is empty)")
    stats.rows_read += read
    stats.rejected += read - len(items)
    return items


def _conversation_key(item: Item) -> str:
    """Equal for the same conversation, whatever format or file it came from."""
    return json.dumps(item.messages, ensure_ascii=False)


def _count_repeats(items: list[Item]) -> int:
    return len(items) - len({_conversation_key(item) for item in items})


def _unreadable_links(
    source: OpenedSource, on_error: OnError, stats: PrepareStats, rejects: list[dict]
) -> None:
    """A source folder's links that cannot be followed: their rows would be lost without a word."""
    for link, reason in source.unreadable:
        if on_error == OnError.fail:
            raise DataError(f"{link}: {reason}; fix or remove the link ({SKIP_HINT})")
        stats.unreadable_links.append(str(link))
        rejects.append({"source": str(link), "reason": reason})
        log.warning("%s: %s; its rows (if any) are not read", link, reason)


def _dedupe(items: list[Item], seen: set[str]) -> list[Item]:
    kept = []
    for item in items:
        key = _conversation_key(item)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def _tokenize(
    items: list[Item],
    tokenizer: ChatTokenizer,
    max_length: int | None,
    policy: LengthPolicy,
    on_error: OnError,
    stats: PrepareStats,
    rejects: list[dict],
) -> list[Item]:
    """Attach ids and labels; conversations over `max_length` are shortened or dropped per `policy`.
    A row the template cannot train as it should (a turn lost, nothing trained, a reply whose end of
    turn is not trained) is a bad row: it fails or is rejected per `on_error`."""
    stats.max_length, stats.length_policy = max_length, policy if max_length else None
    if max_length:  # bound the work per row before anything is rendered or tokenized
        chars = (max_length + MARGIN_TOKENS) * tokenizer.longest_token_chars
        for item in items:
            item.messages, clipped = clip_messages(item.messages, chars)
            stats.clipped_rows += clipped
    textual = []
    for item in items:  # a special token's text in a message: the token would be trained there
        if problem := tokenizer.special_token_text(item.messages):
            stats.special_token_text += 1
            _bad_row(item, problem, on_error, stats, rejects)
        else:
            textual.append(item)
    items = textual
    for item, encoded in zip(items, tokenizer.encode([item.messages for item in items])):
        item.encoded = encoded
    kept = []
    for item in items:
        fitted = item
        length = len(item.encoded.input_ids)
        if not item.encoded.problem and max_length and length > max_length:
            stats.over_max_length += 1
            fitted, reason = _fit(item, tokenizer, max_length, policy, stats)
            if fitted is None:
                stats.dropped_too_long += 1
                rejects.append(
                    {**item.origin, "reason": f"{length} tokens > max_length {max_length}: {reason}"}
                )
                continue
        if problem := item.encoded.problem:
            _bad_row(item, problem, on_error, stats, rejects)
            continue
        kept.append(fitted)
    return kept


def _bad_row(item: Item, problem: str, on_error: OnError, stats: PrepareStats, rejects: list[dict]) -> None:
    """A row that cannot be trained as it should: stop naming it (fail), or list it (skip)."""
    if on_error == OnError.fail:
        raise DataError(f"{item.location}: {problem} ({SKIP_HINT})")
    stats.rejected += 1
    rejects.append({**item.origin, "reason": problem, "raw": {"messages": item.messages}})


def _fit(
    item: Item, tokenizer: ChatTokenizer, max_length: int, policy: LengthPolicy, stats: PrepareStats
) -> tuple[Item | None, str]:
    """The conversation made to fit, or None and why it could not be."""
    if policy == LengthPolicy.drop:
        return None, "dropped (data.length_policy=drop)"
    messages = item.messages
    # The longest run of whole turns that ends with an assistant reply and fits: every token of
    # it is trained on as written, and the model still learns where replies end.
    ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"]
    # A prefix longer than the character budget cannot fit (a token stands for at most
    # longest_token_chars characters), and a longer prefix never has fewer tokens: the longest
    # one that fits is found by bisection among the shorter ones. A conversation of n turns then
    # costs O(log n) encodings of bounded size, not n encodings of growing size (quadratic).
    budget = (max_length + MARGIN_TOKENS) * tokenizer.longest_token_chars
    chars = [0, *accumulate(len(m["content"]) for m in messages)]
    candidates = [end for end in ends if end < len(messages) and chars[end] <= budget]
    tried: dict[int, Encoded] = {len(messages): item.encoded}
    low, high, best = 0, len(candidates) - 1, None
    while low <= high:
        middle = (low + high) // 2
        end = candidates[middle]
        tried[end] = tokenizer.encode([messages[:end]])[0]
        if len(tried[end].input_ids) <= max_length:
            best, low = end, middle + 1
        else:
            high = middle - 1
    if best is not None:
        stats.truncated_turns += 1
        return Item(item.origin, messages[:best], tried[best]), ""
    # Even the first exchange is too long: keep its first max_length tokens (what the trainer's
    # own truncation would do) if any of the reply survives; otherwise nothing would be trained.
    prompt = tokenizer.prompt_length(messages)
    if prompt >= max_length:
        return None, f"the prompt alone is {prompt} tokens, so no reply token would be trained"
    first = ends[0]
    encoded = tried.get(first) or tokenizer.encode([messages[:first]])[0]
    cut = Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length], encoded.problem)
    stats.cut_at_max_length += 1
    return Item(item.origin, messages[:first], cut), ""


def split(items: list, test_size: float, seed: int, key=None) -> tuple[list, list]:
    """(train, test), each in input order; the test rows are a random sample drawn from `seed`.
    With `key`, items of equal key form one group, and `test_size` of the groups are held out whole:
    copies never land on both sides (without copies, the split is the same as without `key`)."""
    groups: dict = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item) if key else i, []).append(i)
    members = list(groups.values())  # in order of first appearance
    n = len(members)
    n_test = min(max(1, round(n * test_size)), n - 1) if n >= 2 else 0
    test_ids = {i for g in random.Random(seed).sample(range(n), n_test) for i in members[g]}
    train = [m for i, m in enumerate(items) if i not in test_ids]
    test = [m for i, m in enumerate(items) if i in test_ids]
    return train, test


def _token_stats(train: list[Item], test: list[Item]) -> dict[str, int]:
    def lengths(items: list[Item]) -> np.ndarray:
        return np.array([len(item.encoded.input_ids) for item in items], dtype=np.int64)

    both = lengths(train + test)
    trained = sum(int((np.asarray(item.encoded.labels) != IGNORE_INDEX).sum()) for item in train)
    return {
        "train": int(lengths(train).sum()),
        "test": int(lengths(test).sum()),
        "train_trained": trained,
        "p50": int(np.percentile(both, 50)),
        "p95": int(np.percentile(both, 95)),
        "max": int(both.max()),
    }


def _write_tokens(path: Path, items: list[Item]) -> None:
    ids_type = pa.list_(pa.int32())
    table = pa.table(
        {
            "input_ids": pa.array([item.encoded.input_ids for item in items], type=ids_type),
            "labels": pa.array([item.encoded.labels for item in items], type=ids_type),
        }
    )
    pq.write_table(table, path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    # A rejected row may hold a lone surrogate; backslashreplace writes it as the JSON escape it came from.
    with path.open("w", encoding="utf-8", newline="\n", errors="backslashreplace") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
