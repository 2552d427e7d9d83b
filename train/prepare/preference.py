"""Preference data for `method=dpo|kto`: checked row by row, rendered as training renders it, split.

Formats (TRL's, https://huggingface.co/docs/trl/dataset_formats), detected per row:
- paired (DPO): `prompt`, `chosen`, `rejected`;
- unpaired (KTO): `prompt`, `completion`, `label` (true: a good completion, false: a bad one).
  `method=kto` also takes pairs: each becomes a good and a bad row, as TRL unpairs them.
`prompt` is a string (one user turn) or a `messages` list ending with a user turn; each completion
is a string (one assistant reply) or a list of assistant messages. A bad row stops the run named by
file and line (or is listed in rejects.jsonl with `data.on_error=skip`), as for SFT data.

Every completion is rendered after its prompt through the model's chat template, the same one SFT
uses and TRL scores with, and goes through SFT's checks (`ChatTokenizer.encode`): every message
appears in the rendering, and the reply trains the end-of-turn token, so the tuned model still
stops. The prompt, rendered with the generation prompt, must be a prefix of the whole in tokens:
TRL scores only the tokens after it (the completion), and a prompt that renders otherwise would
be scored on a context inference never shows. Rows longer than `max_length` tokens are dropped
and listed (cutting one would cut off the end of turn of a completion).

Outputs: train.jsonl / test.jsonl with `prompt`, `chosen`, `rejected` (or `completion`, `label`)
as message lists, plus `messages` (the prompt and the preferred completion) for the held-out
answers; rejects.jsonl and stats.json, like `train.prepare.pipeline`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.config import Objective, OnError
from train.prepare.formats import RowError, _from_turns, _require_object, _text
from train.prepare.pipeline import SKIP_HINT, _write_jsonl, split
from train.prepare.sources import DataError, OpenedSource
from train.prepare.tokens import ChatTokenizer

log = logging.getLogger(__name__)

ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


@dataclass
class PreferenceStats:
    """What `prepare_preferences` did; rows_read == kept + rejected + dropped_too_long (+ unpaired)."""

    objective: str = ""
    rows_read: int = 0
    kept: int = 0  # rows after unpairing (KTO from pairs: two per pair)
    rejected: int = 0
    dropped_too_long: int = 0
    train: int = 0
    test: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    max_length: int | None = None
    # Tokens: every sequence scored (prompt + each completion) and the completion tokens alone.
    tokens: dict[str, int] = field(default_factory=dict)


def _messages(value: Any, key: str, last_role: str | None, only: str | None = None) -> list[dict]:
    """A string (one turn of `last_role`) or a list of role/content messages."""
    if isinstance(value, str):
        return [{"role": last_role or only, "content": _text(value, key)}]
    if not isinstance(value, list):
        raise RowError(f"{key} is neither a string nor a list of messages (got {type(value).__name__})")
    messages = _from_turns({key: value}, key, "role", "content", ROLES, "role")
    if only and any(m["role"] != only for m in messages):
        raise RowError(
            f"{key} holds a {next(m['role'] for m in messages if m['role'] != only)} turn; "
            f"a completion is {only} turns only (earlier turns belong in prompt)"
        )
    if last_role and messages[-1]["role"] != last_role:
        raise RowError(f"{key} ends with a {messages[-1]['role']} turn; it must end with a {last_role} turn")
    return messages


def to_preference(record: Any, objective: Objective) -> tuple[str, list[dict]]:
    """(format, rows): the record as one DPO row or one or two KTO rows of message lists."""
    _require_object(record)
    if "prompt" not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise RowError(
            f"no 'prompt' field (preference rows have prompt/chosen/rejected or "
            f"prompt/completion/label; got: {keys})"
        )
    prompt = _messages(record["prompt"], "prompt", "user")
    if "chosen" in record or "rejected" in record:
        chosen, rejected = (_messages(record.get(k), k, None, "assistant") for k in ("chosen", "rejected"))
        if chosen == rejected:
            raise RowError("chosen and rejected are the same: the pair teaches nothing")
        if objective == Objective.kto:
            return "paired", [
                {"prompt": prompt, "completion": chosen, "label": True},
                {"prompt": prompt, "completion": rejected, "label": False},
            ]
        return "paired", [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    if "completion" in record:
        if objective == Objective.dpo:
            raise RowError(
                "a prompt/completion/label row has no pair: method=dpo needs chosen and rejected "
                "(method=kto trains on such rows)"
            )
        label = record.get("label")
        if not isinstance(label, bool):
            raise RowError(f"label must be true or false (got {label!r})")
        completion = _messages(record["completion"], "completion", None, "assistant")
        return "unpaired", [{"prompt": prompt, "completion": completion, "label": label}]
    raise RowError("no 'chosen'/'rejected' (DPO) or 'completion'/'label' (KTO) field")


def completions(row: dict) -> list[list[dict]]:
    return [row[k] for k in ("chosen", "rejected", "completion") if k in row]


@dataclass
class _Row:
    origin: dict
    row: dict
    lengths: tuple[int, int, int] = (0, 0, 0)  # (tokens of every sequence, completion tokens, longest)

    @property
    def location(self) -> str:
        unit, number = next((k, v) for k, v in self.origin.items() if k != "source")
        return f"{self.origin['source']} {unit} {number}"


def _check_rendering(row: dict, tokenizer: ChatTokenizer, max_length: int | None) -> tuple[str | None, tuple]:
    """(problem or None, (all tokens, completion tokens, longest sequence)); "too long" problems
    start with '>'."""
    tok = tokenizer.tokenizer
    prompt_ids = tok.apply_chat_template(
        row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    total = trained = longest = 0
    for completion, encoded in zip(
        completions(row), tokenizer.encode([row["prompt"] + c for c in completions(row)])
    ):
        if encoded.problem:
            return encoded.problem, (0, 0, 0)
        full = tok.apply_chat_template(row["prompt"] + completion, tokenize=True, return_dict=False)
        if list(full[: len(prompt_ids)]) != list(prompt_ids):
            return (
                "the prompt rendered with the generation prompt is not the start of the prompt and completion "
                f"rendered together, so the completion cannot be scored alone: {tokenizer._ways_out()}"
            ), (0, 0, 0)
        if max_length and len(full) > max_length:
            return f">{len(full)} tokens > max_length {max_length}: dropped", (0, 0, 0)
        total, trained, longest = (
            total + len(full),
            trained + len(full) - len(prompt_ids),
            max(longest, len(full)),
        )
    return None, (total, trained, longest)


def prepare_preferences(
    opened: OpenedSource,
    output_dir: Path,
    *,
    objective: Objective,
    on_error: OnError,
    test_size: float,
    seed: int,
    tokenizer: ChatTokenizer | None,
    max_length: int | None,
    eval_source: OpenedSource | None = None,
) -> PreferenceStats:
    """Validate, check against the chat template, split and write preference rows (see the module)."""
    stats = PreferenceStats(objective=str(objective), max_length=max_length)
    rejects: list[dict] = []
    parts = {"train": _read(opened, objective, on_error, stats, rejects)}
    if eval_source is not None:
        parts["test"] = _read(eval_source, objective, on_error, stats, rejects)
    if tokenizer is not None:
        parts = {
            name: _checked(rows, tokenizer, max_length, on_error, stats, rejects)
            for name, rows in parts.items()
        }
    _write_jsonl(output_dir / "rejects.jsonl", rejects)
    if not parts["train"]:
        raise DataError(
            f"{opened.label}: no preference row left to train on; see {output_dir / 'rejects.jsonl'}"
        )
    train, test = parts["train"], parts.get("test")
    if test is None:  # by source row: a pair unpaired for KTO stays on one side of the split
        groups: dict[str, list[_Row]] = {}
        for r in train:
            groups.setdefault(json.dumps(r.origin, sort_keys=True), []).append(r)
        train_groups, test_groups = split(list(groups.values()), test_size, seed)
        train, test = [r for g in train_groups for r in g], [r for g in test_groups for r in g]
    stats.train, stats.test = len(train), len(test)
    stats.kept = stats.train + stats.test
    if tokenizer is not None:
        stats.tokens = {
            "train": sum(r.lengths[0] for r in train),
            "test": sum(r.lengths[0] for r in test),
            "train_trained": sum(r.lengths[1] for r in train),
            # per sequence (prompt + one completion): what max_length bounds, and takes from the data
            "p95": int(np.percentile([r.lengths[2] for r in train + test], 95)),
            "max": max(r.lengths[2] for r in train + test),
        }
    for name, rows in (("train", train), ("test", test)):
        _write_jsonl(output_dir / f"{name}.jsonl", [_written(r) for r in rows])
    (output_dir / "stats.json").write_text(json.dumps(asdict(stats), indent=2) + "\n", encoding="utf-8")
    log.info("prepared %s preference rows into %s: %s", objective, output_dir, stats)
    return stats


def _written(r: _Row) -> dict:
    """A row as train.jsonl/test.jsonl hold it: TRL's columns, the held-out answer's conversation,
    and its token counts (all sequences, completions alone) for mixtures weighted by tokens."""
    return {**r.row, "messages": _preferred(r.row), "tokens": r.lengths[0], "trained_tokens": r.lengths[1]}


def _preferred(row: dict) -> list[dict]:
    """The prompt and the preferred completion (a KTO row's own when good; none for a bad one)."""
    if "chosen" in row:
        return row["prompt"] + row["chosen"]
    return row["prompt"] + row["completion"] if row["label"] else []


def _read(source, objective, on_error, stats, rejects) -> list[_Row]:
    # Rows are rendered as given, as SFT rows and served prompts are (common/rendering.py).
    rows, read = [], 0
    for raw in source.rows():
        read += 1
        try:
            if raw.error:
                raise RowError(raw.error)
            fmt, converted = to_preference(raw.record, objective)
        except RowError as e:
            if on_error == OnError.fail:
                raise DataError(f"{raw.location}: {e} ({SKIP_HINT})") from None
            rejects.append({"source": raw.path, raw.unit: raw.number, "reason": str(e), "raw": raw.raw})
            stats.rejected += 1
            continue
        stats.formats[fmt] = stats.formats.get(fmt, 0) + 1
        for row in converted:
            rows.append(_Row({"source": raw.path, raw.unit: raw.number}, row))
    if not read:
        raise DataError(f"{source.label}: no rows to prepare (the data is empty)")
    stats.rows_read += read
    return rows


def _checked(rows, tokenizer, max_length, on_error, stats, rejects) -> list[_Row]:
    kept = []
    for r in rows:
        problem, r.lengths = _check_rendering(r.row, tokenizer, max_length)
        if problem is None:
            kept.append(r)
        elif problem.startswith(">"):
            stats.dropped_too_long += 1
            rejects.append({**r.origin, "reason": problem[1:]})
        elif on_error == OnError.fail:
            raise DataError(f"{r.location}: {problem}")
        else:
            stats.rejected += 1
            rejects.append({**r.origin, "reason": problem, "raw": r.row})
    return kept
