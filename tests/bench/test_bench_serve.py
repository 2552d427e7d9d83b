"""The serving benchmark against the REAL local scoring server (`python -m deploy target=local`,
key auth on) serving the tiny model registered in MLflow. No latency is asserted."""

from __future__ import annotations

import json
import secrets

import pytest

from bench import serve
from tests.conftest import register_tiny_model

KEY = "bench-" + secrets.token_urlsafe(18)
MODEL_NAME = "tiny-phi3-bench-serve"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The untrained tiny model registered as the recipe registers it, served with a key."""
    from deploy.serve.background import serve_in_background

    uri = register_tiny_model(tmp_path_factory.mktemp("mlflow"), MODEL_NAME)
    env = {"MLFLOW_TRACKING_URI": uri, "FINETUNE_PHI_ENDPOINT_KEY": KEY}
    with serve_in_background(f"models:/{MODEL_NAME}/1", env=env) as base_url:
        yield base_url


@pytest.mark.parametrize("api", ["openai", "score"])
def test_levels_with_ratios_and_the_targets_line(served, tmp_path, monkeypatch, api):
    monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", KEY)
    results = serve.main(
        [
            "--url", served,
            "--api", api,
            "--concurrency", "1", "8",
            "--requests", "8",
            "--max-tokens", "5",
            "--results-dir", str(tmp_path),
        ]
    )  # fmt: skip
    levels = {row["concurrency"]: row for row in results["levels"]}
    assert sorted(levels) == [1, 8] and results["route"] == serve.ROUTES[api]
    for row in levels.values():
        assert (row["ok"], row["errors"]) == (8, 0)
        assert 0 < row["latency_p50_s"] <= row["latency_p95_s"]
        # The untrained model never stops early: every answer is max_tokens long, by the server's count.
        assert row["completion_tokens_mean"] == 5
        # The server, found by its port: python, torch and the tiny model are well over 100 MB resident.
        assert 0.1 < row["peak_rss_gib"] < 3
        assert row["tokens_per_s"] > 0 and row["requests_per_s"] > 0
    assert levels[1]["tokens_per_s_vs_c1"] == levels[1]["tokens_per_s_vs_sequential"] == 1
    eight = levels[8]
    assert eight["tokens_per_s_vs_c1"] == eight["tokens_per_s"] / levels[1]["tokens_per_s"]
    assert eight["tokens_per_s_vs_sequential"] == eight["tokens_per_s"] / eight["sequential_tokens_per_s"]
    assert results["targets"]["latency_p95_vs_c1"] == eight["latency_p95_s"] / levels[1]["latency_p95_s"]

    saved = tmp_path / results["json_path"].rsplit("/", 1)[1]
    assert saved.name.endswith(".json") and "-serve-" in saved.name
    assert json.loads(saved.read_text())["levels"][0]["ok"] == 8
    table = saved.with_suffix(".md").read_text()
    assert "| concurrency | requests ok |" in table and "| 8 | 8 | 0 |" in table
    assert "targets at concurrency 8: tokens/s" in table
    for written in (saved, saved.with_suffix(".md")):
        assert KEY not in written.read_text()  # the key is sent, never recorded


def test_a_wrong_key_fails_loudly_with_the_servers_answer(served):
    with pytest.raises(RuntimeError, match=r"every request failed.*refused the request \(401\)"):
        serve.run_serve_benchmark(served, [1], 1, 2, key="wrong")


def test_only_the_local_endpoint_is_measured():
    with pytest.raises(SystemExit, match="local endpoint"):
        serve.check_loopback("https://example.inference.ml.azure.com")
