"""Load chat data in ultrachat's `messages` schema as train and test splits.

Local files (.jsonl/.json/.parquet/.csv) and hub datasets go through `datasets.load_dataset`;
a hub id with a split expression (`train_sft[:1%]`) is what the seed recipe used.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from train.model import ConfigError

log = logging.getLogger(__name__)

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _as_list(files) -> list[str]:
    return [str(f) for f in ([files] if isinstance(files, (str, Path)) else files)]


def _load(files, hub_config: str | None, split: str) -> Dataset:
    paths = _as_list(files)
    if all(Path(p).exists() for p in paths):
        suffixes = {Path(p).suffix for p in paths}
        if len(suffixes) != 1 or next(iter(suffixes)) not in LOCAL_BUILDERS:
            raise ConfigError(f"data files {paths}: expected one of {sorted(LOCAL_BUILDERS)}, all alike")
        return load_dataset(LOCAL_BUILDERS[suffixes.pop()], data_files=paths, split="train")
    if len(paths) == 1 and not Path(paths[0]).suffix:
        return load_dataset(paths[0], hub_config, split=split)
    missing = [p for p in paths if not Path(p).exists()]
    raise ConfigError(f"data files not found: {missing} (data.train_files / data.eval_files)")


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


def load_splits(data_cfg, model_cfg, seed: int) -> DatasetDict:
    train = _load(data_cfg.train_files, data_cfg.hub_config, data_cfg.train_split)
    if data_cfg.eval_files:
        test = _load(data_cfg.eval_files, data_cfg.hub_config, "train")
    elif data_cfg.eval_split:
        test = _load(data_cfg.train_files, data_cfg.hub_config, data_cfg.eval_split)
    else:
        parts = train.train_test_split(test_size=data_cfg.test_size, seed=seed)
        train, test = parts["train"], parts["test"]
    if data_cfg.max_train_rows:
        train = train.select(range(min(data_cfg.max_train_rows, len(train))))
    if data_cfg.max_eval_rows:
        test = test.select(range(min(data_cfg.max_eval_rows, len(test))))
    splits = DatasetDict(
        train=_keep_messages(train, model_cfg.add_empty_system_turn),
        test=_keep_messages(test, model_cfg.add_empty_system_turn),
    )
    log.info("data %s: %d train, %d test conversations", data_cfg.name, len(splits["train"]), len(splits["test"]))
    return splits


def data_fingerprint(splits: DatasetDict) -> str:
    """A short content hash of the exact rows trained and evaluated on (an MLflow tag)."""
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        h.update(splits[name]._fingerprint.encode())
    return h.hexdigest()[:16]
