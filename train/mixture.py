"""Weighted data mixtures (`data.sources`), for SFT and preference data alike.

    python -m train data=mixture                       # conf/data/mixture.yaml: two sources, weighted

Each source is prepared on its own exactly as a single `data.source` is (validated by file and
line, tokenized, cached by content) and split into train and held-out rows there, before any
weighting, so an upsampled copy can never land on the other side of the split. Then each source's
train rows are weighted with a fixed seed: `weight` multiplies its rows (`data.weight_by=rows`) or
its tokens (`tokens`: rows are drawn until the weighted token count is reached). Whole copies for
the integer part, a random sample without repeats for the fraction, so 0.3 keeps 30% and 2.5 gives
two copies and half again.

The held-out rows of every source stay unweighted and separate: the trainer evaluates each on its
own (`eval_<name>_loss`, and for preference data `eval_<name>_rewards/...`, logged to MLflow per
evaluation), so forgetting of one source shows; `eval_loss` is their mean weighted by held-out rows.
The mixture's stats.json gives each source's share: rows, tokens and trained tokens, before and
after weighting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

from datasets import Dataset, DatasetDict, concatenate_datasets
from omegaconf import DictConfig, OmegaConf, open_dict

from train.config import MixSource, MixWeighting
from train.errors import ConfigError

log = logging.getLogger(__name__)


REHEARSAL = "rehearsal"  # the source name of `rehearsal.source` (train/rehearsal.py)


def with_rehearsal(cfg: DictConfig) -> DictConfig:
    """The config with `rehearsal.source` as one more source of `data` (a single `data.source`
    becomes the first source of a two-source mixture); unchanged without one, with weight 0, or for
    preference data (the rehearsal rows are SFT conversations)."""
    rehearsal = cfg.get("rehearsal")
    if not rehearsal or not rehearsal.source or not rehearsal.weight:
        return cfg
    if cfg.get("method", "sft") != "sft":
        log.info("rehearsal.source is SFT data: not mixed into method=%s's preference pairs", cfg.method)
        return cfg
    mixed = cfg.copy()
    with open_dict(mixed):
        if not mixed.data.sources:
            data = mixed.data
            mixed.data.sources = [
                MixSource(
                    name=data.name,
                    source=data.source,
                    eval_source=data.eval_source,
                    split=data.split,
                    eval_split=data.eval_split,
                )
            ]
        mixed.data.sources.append(MixSource(name=REHEARSAL, source=rehearsal.source, weight=rehearsal.weight))
        mixed.rehearsal.source = None  # now a source: each source's own config mixes nothing more in
    return mixed


def answered_held_out(splits: DatasetDict) -> Dataset:
    """The held-out rows whose answers measure learning: all but the rehearsal's (those are the
    starting model's own answers, which it matches before any training)."""
    if f"test:{REHEARSAL}" not in splits:
        return splits["test"]
    return concatenate_datasets(
        [v for k, v in splits.items() if k.startswith("test:") and k != f"test:{REHEARSAL}"]
    )


def _source_cfg(cfg: DictConfig, entry) -> DictConfig:
    """The run's config with `data` narrowed to one source of the mixture."""
    one = cfg.copy()
    with open_dict(one):
        one.data.sources = None
        one.data.name, one.data.source = entry.name, entry.source
        one.data.eval_source, one.data.split, one.data.eval_split = (
            entry.eval_source,
            entry.split,
            entry.eval_split,
        )
        one.data.output_dir = None  # each source in its own cache folder
    return one


def row_tokens(rows: Dataset) -> tuple[list[int], list[int]]:
    """(tokens, trained tokens) per row: SFT rows from their ids and labels, preference rows from the
    counts written at preparation."""
    if "input_ids" in rows.column_names:
        return [len(i) for i in rows["input_ids"]], [
            sum(t != -100 for t in labels) for labels in rows["labels"]
        ]
    return list(rows["tokens"]), list(rows["trained_tokens"])


def weighted_indices(lengths: list[int], weight: float, by: MixWeighting, rng: random.Random) -> list[int]:
    """Row indices after weighting: whole copies for the integer part, then a random sample (no
    repeats) for the fraction, counted in rows or in tokens."""
    n = len(lengths)
    copies, fraction = int(weight), weight - int(weight)
    chosen = [i for _ in range(copies) for i in range(n)]
    order = rng.sample(range(n), n)
    if by == MixWeighting.rows:
        return chosen + sorted(order[: round(fraction * n)])
    target, total, extra = fraction * sum(lengths), 0, []
    for i in order:
        if total >= target:
            break
        extra.append(i)
        total += lengths[i]
    return chosen + sorted(extra)


def load_mixture(cfg: DictConfig, tokenizer, load_one) -> tuple[DatasetDict, object]:
    """Train rows weighted across `data.sources`, the held-out rows of all (`test`) and of each
    (`test:<name>`), and a PreparedData for the whole (its folder holds stats, train and test)."""
    from train.data import PreparedData

    entries = list(cfg.data.sources)
    names = [e.name for e in entries]
    if len(set(names)) != len(names) or any(not n or ":" in n for n in names):
        raise ConfigError(f"data.sources: names must be distinct and non-empty, without ':' (got {names})")
    if any(e.weight < 0 for e in entries):
        raise ConfigError("data.sources: a weight is a non-negative multiplier (0.5 halves, 2 doubles)")
    rng = random.Random(cfg.seed)
    trains, tests, shares = [], {}, {}
    for entry in entries:
        splits, prepared = load_one(_source_cfg(cfg, entry), tokenizer)
        tokens, trained = row_tokens(splits["train"])
        picked = weighted_indices(
            tokens if cfg.data.weight_by == MixWeighting.tokens else [1] * len(tokens),
            entry.weight,
            cfg.data.weight_by,
            rng,
        )
        trains.append(splits["train"].select(picked))
        tests[entry.name] = splits["test"]
        shares[entry.name] = {
            "weight": entry.weight,
            "prepared": str(prepared.dir),
            "rows_before": len(tokens),
            "rows": len(picked),
            "tokens": sum(tokens[i] for i in picked),
            "trained_tokens": sum(trained[i] for i in picked),
            "test_rows": len(splits["test"]),
            "longest": (prepared.stats.get("tokens") or {}).get("max"),  # max_length from the data
            "max_length": prepared.stats.get("max_length"),  # the cap its preparation used
        }
    train = concatenate_datasets(trains).shuffle(seed=cfg.seed)
    for key in ("rows", "tokens", "trained_tokens"):
        total = sum(s[key] for s in shares.values()) or 1
        for s in shares.values():
            s[f"{key}_share"] = round(s[key] / total, 4)
    stats = _stats(shares, train, tests)
    out = _write(cfg, stats, train, tests)
    log.info("mixture: %s", json.dumps(shares))
    splits = DatasetDict(train=train, test=concatenate_datasets(list(tests.values())))
    for name, test in tests.items():
        splits[f"test:{name}"] = test
    return splits, PreparedData(out, stats, False)


def _stats(shares: dict, train: Dataset, tests: dict) -> dict:
    return {
        "mixture": shares,
        "weight_by": None,
        "rows_read": sum(s["rows_before"] + s["test_rows"] for s in shares.values()),
        "rejected": 0,  # each source's own stats.json (its `prepared` folder) lists its rejects
        "dropped_too_long": 0,
        "train": len(train),
        "test": sum(len(t) for t in tests.values()),
        "tokens": {
            "train": sum(s["tokens"] for s in shares.values()),
            "train_trained": sum(s["trained_tokens"] for s in shares.values()),
            "max": max((s["longest"] or 0 for s in shares.values()), default=0),  # any source's longest row
        },
        "max_length": max((s["max_length"] or 0 for s in shares.values()), default=0) or None,
    }


def _write(cfg: DictConfig, stats: dict, train: Dataset, tests: dict) -> Path:
    """The mixture's folder: stats.json, and the held-out rows of every source (test.jsonl, which
    `python -m deploy action=evaluate|promote` answers), named by the sources and weights."""
    stats["weight_by"] = str(cfg.data.weight_by)
    spec = OmegaConf.to_container(cfg.data.sources, resolve=True)
    key = hashlib.sha256(json.dumps([spec, stats], sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = Path(cfg.paths.cache_dir) / "mixtures" / key
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    (out / "rejects.jsonl").write_text("", encoding="utf-8")
    keep = [
        c
        for c in ("messages", "prompt", "chosen", "rejected", "completion", "label")
        if c in train.column_names
    ]
    with (out / "test.jsonl").open("w", encoding="utf-8") as f:
        for name, test in tests.items():
            for row in test.select_columns(keep):
                f.write(json.dumps({**row, "source": name}, ensure_ascii=False) + "\n")
    return out
