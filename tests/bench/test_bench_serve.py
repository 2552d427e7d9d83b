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
    from deploy.local import serve_in_background

    uri = register_tiny_model(tmp_path_factory.mktemp("mlflow"), MODEL_NAME)
    env = {"MLFLOW_TRACKING_URI": uri, "FINETUNE_PHI_ENDPOINT_KEY": KEY}
    with serve_in_background(f"models:/{MODEL_NAME}/1", env=env) as base_url:
        yield base_url


def test_latency_and_tokens_at_batch_1_and_under_concurrency(served, tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", KEY)
    results = serve.main(
        [
            "--url", served,
            "--concurrency", "1", "3",
            "--requests", "4",
            "--max-tokens", "5",
            "--results-dir", str(tmp_path),
        ]
    )  # fmt: skip
    levels = {row["concurrency"]: row for row in results["levels"]}
    assert sorted(levels) == [1, 3]
    for row in levels.values():
        assert (row["ok"], row["errors"]) == (4, 0)
        assert 0 < row["latency_p50_s"] <= row["latency_p95_s"]
        assert 0 < row["completion_tokens_mean"] <= 5  # the server's own count, capped by max_tokens
        assert row["tokens_per_s"] > 0 and row["requests_per_s"] > 0

    saved = tmp_path / results["json_path"].rsplit("/", 1)[1]
    assert saved.name.endswith(".json") and "-serve-" in saved.name
    assert json.loads(saved.read_text())["levels"][0]["ok"] == 4
    table = saved.with_suffix(".md").read_text()
    assert "| concurrency | requests ok |" in table and "| 3 | 4 | 0 |" in table
    for written in (saved, saved.with_suffix(".md")):
        assert KEY not in written.read_text()  # the key is sent, never recorded


def test_a_wrong_key_fails_loudly_with_the_servers_answer(served):
    with pytest.raises(RuntimeError, match=r"every request failed.*refused the request \(401\)"):
        serve.run_serve_benchmark(served, [1], 1, 2, "hi", key="wrong")


def test_only_the_local_endpoint_is_measured():
    with pytest.raises(SystemExit, match="local endpoint"):
        serve.check_loopback("https://example.inference.ml.azure.com")
