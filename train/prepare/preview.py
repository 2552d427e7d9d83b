"""Show prepared examples exactly as the trainer will see them, trained tokens marked.

The text is decoded from the prepared `input_ids` (the chat template already applied), cut
where the trainer cuts, and split into runs by label: tokens with a label are trained on
(shown inside ⟦ ⟧, green on a terminal), tokens labelled -100 are context only. It reads the
same `*.tokens.parquet` the trainer loads, so what you see is what is trained.
"""

from __future__ import annotations

import os
import sys
from itertools import groupby
from pathlib import Path

import pyarrow.parquet as pq

from train.prepare.tokens import IGNORE_INDEX

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"
GREEN, DIM, RESET = "\033[32m", "\033[2m", "\033[0m"


def use_color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def trainer_view(input_ids: list[int], labels: list[int], sft_cfg) -> tuple[list[int], list[int]]:
    """The ids and labels after the trainer's own truncation (none when packing)."""
    if sft_cfg.max_length and not sft_cfg.packing:
        if sft_cfg.truncation_mode == "keep_end":
            return input_ids[-sft_cfg.max_length :], labels[-sft_cfg.max_length :]
        return input_ids[: sft_cfg.max_length], labels[: sft_cfg.max_length]
    return input_ids, labels


def runs(input_ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """(trained, ids) for each maximal run of tokens that are all trained or all masked."""
    out, position = [], 0
    for trained, group in groupby(labels, key=lambda label: label != IGNORE_INDEX):
        n = len(list(group))
        out.append((trained, input_ids[position : position + n]))
        position += n
    return out


def mark(tokenizer, input_ids: list[int], labels: list[int], color: bool = False) -> str:
    """The decoded text with trained runs marked (colour on a terminal, brackets always)."""
    parts = []
    for trained, ids in runs(input_ids, labels):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if trained:
            parts.append(f"{GREEN}{TRAINED_OPEN}{text}{TRAINED_CLOSE}{RESET}" if color else f"⟦{text}⟧")
        else:
            parts.append(f"{DIM}{text}{RESET}" if color else text)
    return "".join(parts)


def stats_summary(stats: dict, prepared_dir: Path) -> str:
    tokens = stats.get("tokens") or {}
    lines = [
        f"prepared data  {prepared_dir}",
        f"  rows read      {stats['rows_read']}",
        f"  kept           {stats['kept']} (train {stats['train']}, test {stats['test']})",
        f"  rejected       {stats['rejected']}"
        + (f"  -> {prepared_dir / 'rejects.jsonl'}" if stats["rejected"] else ""),
        f"  duplicates     {stats['duplicates']} found, {stats['duplicates_removed']} removed"
        " (copies are never on both sides of the split)",
        f"  turns          {stats['turns']}",
    ]
    if stats["special_token_text"] or stats["over_max_turns"]:
        lines.append(
            f"  of the rejected: {stats['special_token_text']} hold a special token's text, "
            f"{stats['over_max_turns']} have more than data.max_turns messages"
        )
    if stats["unreadable_links"]:
        lines.append(
            f"  unreadable links  {len(stats['unreadable_links'])} (not read): {', '.join(stats['unreadable_links'])}"
        )
    if tokens:
        lines.append(
            f"  tokens/conv    p50 {tokens['p50']}, p95 {tokens['p95']}, max {tokens['max']}"
            f" (train total {tokens['train']}, of which trained {tokens['train_trained']})"
        )
    if stats.get("max_length"):
        lines.append(
            f"  over {stats['max_length']} tokens  {stats['over_max_length']} "
            f"(policy {stats['length_policy']}: {stats['truncated_turns']} truncated at a turn, "
            f"{stats['cut_at_max_length']} cut at max_length, {stats['dropped_too_long']} dropped)"
        )
    return "\n".join(lines)


def render(cfg, tokenizer, prepared, n: int, color: bool | None = None) -> str:
    """The first `n` training examples as the trainer sees them, then the preparation stats."""
    color = use_color() if color is None else color
    table = pq.read_table(prepared.dir / "train.tokens.parquet").slice(0, n).to_pylist()
    out = [f"{len(table)} training examples as the trainer sees them; trained tokens inside ⟦ ⟧", ""]
    for i, row in enumerate(table, 1):
        ids, labels = trainer_view(row["input_ids"], row["labels"], cfg.sft)
        trained = sum(label != IGNORE_INDEX for label in labels)
        out += [
            f"--- example {i}: {len(ids)} tokens, {trained} trained ---",
            mark(tokenizer, ids, labels, color),
            "",
        ]
    out.append(stats_summary(prepared.stats, prepared.dir))
    return "\n".join(out)
