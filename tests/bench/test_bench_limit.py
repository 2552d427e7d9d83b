"""The speed-against-the-limit benchmark on the tiny model: both training variants, the matmul
limit and both generators run and are reported; no speed is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import limit

pytestmark = pytest.mark.slow


def test_training_and_generation_rows_beside_the_matmul_limit(tmp_path, tiny_cache):
    results = limit.main(
        ["model=tiny", f"paths.cache_dir={tiny_cache}", "--steps", "1", "--warmup", "1", "--prompts", "3",
         "--max-new-tokens", "4", "--matmul-size", "256", "--results-dir", str(tmp_path)]
    )  # fmt: skip
    stats = json.loads(next((tiny_cache / "prepared").glob("*/stats.json")).read_text())["tokens"]
    configured, packed = results["training"]["as configured"], results["training"]["packed"]
    # Padded rows count only their real tokens: each row is one conversation, no longer than the longest.
    assert configured["conversations_per_step"] == 32  # the tiny recipe's batch
    assert 0 < configured["real_tokens"] / configured["conversations_per_step"] <= stats["max"]
    # Packed: the same 32 rows hold several conversations each, with no padding between them.
    assert packed["conversations_per_step"] > 32 and packed["real_tokens"] > configured["real_tokens"]
    for row in (configured, packed):
        assert row["flops_per_token"] == "6N" and row["share_of_matmul"] > 0
    for name in ("evaluation", "serving"):
        for mode in ("batched", "alone"):
            assert results["generation"][name][mode]["answers"] == 3
    markdown = Path(results["json_path"]).with_suffix(".md").read_text()
    assert "| packed (6N + attention) |" in markdown and "| serving |" in markdown
