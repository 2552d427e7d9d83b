"""Long conversations: `train.prepare` time against the number of turns in one row.

python -m bench.long_rows                          # 500 .. 8,000 turns, max_length 1024, TRL's template
python -m bench.long_rows --turns 1000 10000 --max-length 4096
python -m bench.long_rows --masked-by-rendering    # a template without generation markers

Each point prepares one conversation of N short turns (plus one short row) with the tiny model's
tokenizer and the truncate policy, and reports CPU seconds (this process and its tokenizer threads)
and microseconds per turn: linear work keeps that column flat, quadratic work doubles it with N.
Before the fix the length policy tokenized every prefix of a long row to find the longest that fits,
and checked each reply against every trained end-of-turn token: 1,000 turns took 11.7 s and 2,000
took 65 s of CPU (load average 12-17 on 2 cores), 10,000 did not finish.

`--masked-by-rendering` uses a chat template TRL does not ship a training variant of, so the loss
mask comes from rendering each prefix (`train.prepare.tokens`): that path renders a prefix per
reply, quadratic in the turns by its nature, and `data.max_turns` (1,000 by default) bounds it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.metrics import describe_hardware
from bench.report import markdown_table

COLUMNS = [("turns", "turns", ""), ("CPU s", "seconds", ".2f"), ("µs/turn", "per_turn", ".0f")]


def conversation(turns: int) -> dict:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": f"turn {i}: a short line"} for i in range(turns)]}


def time_one(chat_tokenizer, turns: int, max_length: int, root: Path) -> float:
    from train.prepare import prepare

    source = root / f"long{turns}.jsonl"
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    source.write_text(json.dumps(conversation(turns)) + "\n" + json.dumps(short) + "\n", encoding="utf-8")
    started = time.process_time()
    stats = prepare(source, root / f"out{turns}", tokenizer=chat_tokenizer, max_length=max_length)
    seconds = time.process_time() - started
    assert stats.truncated_turns == 1, stats
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, nargs="+", default=[500, 1000, 2000, 4000, 8000])
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--masked-by-rendering", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from train.prepare import ChatTokenizer
    from train.tiny_model import ensure_tiny_phi3

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_phi3())
    if args.masked_by_rendering:  # the same template, no longer one TRL recognises
        tokenizer.chat_template = "{#- bench: a template TRL does not know -#}\n" + tokenizer.chat_template
    chat_tokenizer = ChatTokenizer(tokenizer)
    chat_tokenizer.check_template()
    print(f"masked by rendering: {chat_tokenizer.masks_by_rendering}; {describe_hardware(on_cuda=False)}")
    time_one(chat_tokenizer, 200, args.max_length, Path(tempfile.mkdtemp()))  # warm up (template compile)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-long-rows-") as tmp:
        for turns in args.turns:
            seconds = time_one(chat_tokenizer, turns, args.max_length, Path(tmp))
            rows.append({"turns": turns, "seconds": seconds, "per_turn": seconds / turns * 1e6})
            print(f"{turns} turns: {seconds:.2f} s", flush=True)
    print(markdown_table(COLUMNS, rows))


if __name__ == "__main__":
    main()
