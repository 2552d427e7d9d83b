"""Prepare chat data for training: read, validate, convert, length-limit, split, tokenize, preview.

`python -m train.prepare data.source=SOURCE data.output_dir=DIR` (see `__main__.py`) writes
DIR/train.jsonl and DIR/test.jsonl in ultrachat's `messages` schema plus stats and rejects;
`python -m train` runs the same preparation (cached by content hash) before it trains.

- `sources`: local files (.jsonl/.json/.parquet/.csv, or a directory) and hub datasets, row by row
  with their locations;
- `formats`: messages, ShareGPT, Alpaca, prompt/completion -> `messages`, with a reason per bad row;
- `tokens`: batched chat-template rendering and tokenization, with the loss mask (TRL's where TRL
  has one, by rendering otherwise) and the per-row checks that the model learns to stop;
- `pipeline`: `prepare()`, which ties them together and writes the outputs;
- `preview`: examples as the trainer sees them, trained tokens marked.
"""

from train.prepare.pipeline import PrepareStats, prepare, split
from train.prepare.sources import SUFFIXES, DataError, Source, read_rows
from train.prepare.tokens import ChatTokenizer

__all__ = [
    "SUFFIXES",
    "ChatTokenizer",
    "DataError",
    "PrepareStats",
    "Source",
    "prepare",
    "read_rows",
    "split",
]
