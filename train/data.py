"""Load chat data in ultrachat's `messages` schema as train and test splits.

A local source (a .jsonl/.json/.parquet/.csv file or a directory of them, in any format
`train.formats` knows) is validated, normalised and split by `train.prepare` into the run
directory first, so a bad row stops the run before the model loads, named by file and line,
and the exact files trained on stay with the run. A hub id with a split expression
(`train_sft[:1%]`, the seed recipe's choice) goes through `datasets.load_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from train.model import ConfigError
from train.prepare import SUFFIXES, prepare

log = logging.getLogger(__name__)


def _one_source(files, key: str) -> str:
    if isinstance(files, (str, Path)):
        return str(files)
    if len(files) == 1:
        return str(files[0])
    raise ConfigError(f"{key}: give one file or one directory of files, not {len(files)} paths")


def _looks_local(source: str) -> bool:
    return Path(source).exists() or Path(source).suffix in SUFFIXES


def _prepare_local(data_cfg, seed: int, out_dir: Path) -> tuple[Dataset, Dataset]:
    stats = prepare(
        _one_source(data_cfg.train_files, "data.train_files"),
        out_dir,
        format=data_cfg.format,
        on_error=data_cfg.on_error,
        test_size=data_cfg.test_size,
        eval_source=_one_source(data_cfg.eval_files, "data.eval_files") if data_cfg.eval_files else None,
        seed=seed,
        dedupe=data_cfg.dedupe,
    )
    if stats.rejected:
        log.warning("%d rows rejected; see %s", stats.rejected, out_dir / "rejects.jsonl")

    def load(name: str) -> Dataset:
        return load_dataset("json", data_files=str(out_dir / name), split="train")

    return load("train.jsonl"), load("test.jsonl")


def _load_hub(data_cfg, seed: int) -> tuple[Dataset, Dataset]:
    dataset_id = _one_source(data_cfg.train_files, "data.train_files")
    train = load_dataset(dataset_id, data_cfg.hub_config, split=data_cfg.train_split)
    if data_cfg.eval_split:
        return train, load_dataset(dataset_id, data_cfg.hub_config, split=data_cfg.eval_split)
    parts = train.train_test_split(test_size=data_cfg.test_size, seed=seed)
    return parts["train"], parts["test"]


def _keep_messages(ds: Dataset, add_empty_system_turn: bool) -> Dataset:
    if "messages" not in ds.column_names:
        raise ConfigError(f"dataset has no 'messages' column (columns: {ds.column_names})")

    def normalise(row):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if add_empty_system_turn and messages and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": ""})
        return {"messages": messages}

    extra = [c for c in ds.column_names if c != "messages"]
    return ds.map(normalise, remove_columns=extra, desc="normalising messages")


def load_splits(data_cfg, model_cfg, seed: int, out_dir: Path) -> DatasetDict:
    """Train and test splits; local sources are prepared into `out_dir` first."""
    source = _one_source(data_cfg.train_files, "data.train_files")
    if _looks_local(source):
        train, test = _prepare_local(data_cfg, seed, out_dir)
    else:
        train, test = _load_hub(data_cfg, seed)
    if data_cfg.max_train_rows:
        train = train.select(range(min(data_cfg.max_train_rows, len(train))))
    if data_cfg.max_eval_rows:
        test = test.select(range(min(data_cfg.max_eval_rows, len(test))))
    splits = DatasetDict(
        train=_keep_messages(train, model_cfg.add_empty_system_turn),
        test=_keep_messages(test, model_cfg.add_empty_system_turn),
    )
    log.info(
        "data %s: %d train, %d test conversations", data_cfg.name, len(splits["train"]), len(splits["test"])
    )
    return splits


def data_fingerprint(splits: DatasetDict) -> str:
    """A short hash of the exact conversations trained and evaluated on (an MLflow tag)."""
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        for messages in splits[name]["messages"]:
            h.update(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:16]
