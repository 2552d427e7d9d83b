"""The bundled sample chat dataset: small, offline, and learnable by a tiny model.

`python -m train` with no arguments fine-tunes on this data, so it has to show a real
fine-tune in under two minutes on a CPU: the loss must fall a lot, and the model must
visibly get better on prompts it never saw. The tasks are therefore rules over random word
combinations (count the words, pick the first or last word, name a word's category, name
the next weekday) rather than facts: a held-out prompt is a new combination of the same
rule, so improvement there is generalisation, measured as exact match by `train.evaluate`.
(Copying a whole phrase was tried and dropped: a 2-layer model does not learn it in the
one-minute budget.)

Rows use ultrachat's `messages` schema; some carry a system turn, some are two turns long.
The committed files under `train/assets/` are this module's output:
`python -m train.sample_data` rewrites them, and a test checks they are in sync.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ASSETS_DIR = Path(__file__).parent / "assets"
TRAIN_FILE = ASSETS_DIR / "sample_train.jsonl"
TEST_FILE = ASSETS_DIR / "sample_test.jsonl"

CATEGORIES = {
    "fruit": ["apple", "lemon", "mango", "cherry", "plum", "grape", "melon", "peach"],
    "animal": ["tiger", "rabbit", "zebra", "dolphin", "falcon", "urchin", "otter", "lizard"],
    "colour": ["violet", "silver", "amber", "crimson", "indigo", "olive", "teal", "coral"],
    "tool": ["hammer", "needle", "ladder", "magnet", "kettle", "anchor", "saddle", "lantern"],
    "place": ["river", "forest", "garden", "harbor", "island", "jungle", "meadow", "glacier"],
}
CATEGORY_OF = {word: kind for kind, words in CATEGORIES.items() for word in words}
WORDS = sorted(CATEGORY_OF)
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six"]
SYSTEM_PROMPTS = [
    "You are a precise assistant. Answer with the result only.",
    "Answer briefly.",
]


def _phrase(rng: random.Random) -> list[str]:
    return rng.sample(WORDS, rng.randint(2, 5))


def _task(rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair drawn from the rule set."""
    kind = rng.randrange(5)
    words = _phrase(rng)
    text = " ".join(words)
    if kind == 0:
        word = rng.choice(WORDS)
        return f"What kind of thing is {word}?", CATEGORY_OF[word]
    if kind == 1:
        return f"What is the first word of: {text}", words[0]
    if kind == 2:
        return f"What is the last word of: {text}", words[-1]
    if kind == 3:
        return f"How many words are in: {text}", NUMBER_WORDS[len(words)]
    day = rng.randrange(len(WEEKDAYS))
    return f"Which day comes after {WEEKDAYS[day]}?", WEEKDAYS[(day + 1) % 7]


def make_conversation(rng: random.Random) -> dict:
    """A conversation of one or two exchanges, sometimes with a system turn."""
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(2 if rng.random() < 0.2 else 1):
        prompt, answer = _task(rng)
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": answer})
    first_user = next(m["content"] for m in messages if m["role"] == "user")
    return {"prompt": first_user, "messages": messages}


def generate(n_train: int = 2500, n_test: int = 200, seed: int = 1234) -> tuple[list, list]:
    """Train and test rows; no test prompt occurs in the training rows."""
    rng = random.Random(seed)
    train = [make_conversation(rng) for _ in range(n_train)]
    seen = {m["content"] for row in train for m in row["messages"] if m["role"] == "user"}
    test: list[dict] = []
    while len(test) < n_test:
        row = make_conversation(rng)
        if all(m["content"] not in seen for m in row["messages"] if m["role"] == "user"):
            test.append(row)
    return train, test


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    train, test = generate()
    write_jsonl(train, TRAIN_FILE)
    write_jsonl(test, TEST_FILE)
    print(f"wrote {len(train)} rows to {TRAIN_FILE} and {len(test)} rows to {TEST_FILE}")


if __name__ == "__main__":
    main()
