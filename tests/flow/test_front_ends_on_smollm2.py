"""Both front ends on the REAL SmolLM2-135M-Instruct (`model=smollm2`'s converted model, registered
and served by `python -m deploy target=local`): Prompt flow's flows and Microsoft Agent Framework's
`python -m agent` (in .venv-agent) give the same greedy answers word for word, and the model's
answer to a question it knows is right."""

from __future__ import annotations

import secrets

import pytest

from e2e.front_ends import compare_front_ends
from flow.connect import connect
from tests.conftest import register_tiny_model
from tests.flow.conftest import FLOW_DIR, connect_config

KEY = "smol-" + secrets.token_urlsafe(18)
MODEL_NAME = "smollm2-front-ends"
# A fact it knows (greedy: "The capital of France is Paris."), then a follow-up that needs the history.
QUESTIONS = ["What is the capital of France?", "What language do they speak there?"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served_smollm2(smollm2, tmp_path_factory):
    from deploy.serve.background import serve_in_background

    uri = register_tiny_model(tmp_path_factory.mktemp("mlflow"), MODEL_NAME, model_dir=smollm2)
    env = {"MLFLOW_TRACKING_URI": uri, "FINETUNE_PHI_ENDPOINT_KEY": KEY}
    # A small KV budget (16k tokens of SmolLM2 in float32) on the shared machine; the default is 1024 MiB.
    small_cache = ("target.server.kv_cache_mib=720",)
    with serve_in_background(f"models:/{MODEL_NAME}/1", env=env, overrides=small_cache) as base_url:
        yield base_url


def test_both_front_ends_give_smollm2s_answers(served_smollm2, tmp_path, monkeypatch):
    from promptflow.client import PFClient

    monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", KEY)
    connect(connect_config(f"target.port={served_smollm2.rsplit(':', 1)[1]}"), pf=PFClient())
    result = compare_front_ends(QUESTIONS, served_smollm2, KEY, FLOW_DIR, tmp_path)
    assert result["mismatches"] == []
    assert "Paris" in result["agent framework"]["ask /v1"][0]
    assert (
        result["agent framework"]["chat (HTTP)"][1] != result["agent framework"]["ask /v1"][1]
    )  # history mattered
