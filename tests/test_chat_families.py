"""Beyond Phi-3.5: tiny models of other chat families (tests/tiny_families.py), with their real chat
templates, and a tiny Phi-3 with Phi-3-mini's real vocabulary, through the demo's whole path
unchanged: prepare, train, register, the parity check, local serving."""

from __future__ import annotations

import json
import urllib.request

import mlflow
import pytest

from deploy.registry import parity
from deploy.scoring.score import ChatModel
from deploy.serve.background import serve_in_background
from tests.conftest import compose_config
from train.recipe import run

pytestmark = pytest.mark.slow

# The token each family's template ends a reply with; generation must stop there.
END_OF_TURN = {
    "qwen2_5": "<|im_end|>",
    "smollm2": "<|im_end|>",  # ChatML with a default system prompt
    "llama3_2": "<|eot_id|>",
    "phi4_mini": "<|end|>",
    "phi3_gguf": "<|end|>",
}
# Phi-3-mini's early template has no system role; the GGUF's generation config stops at <|endoftext|> only.
OVERRIDES = {
    "phi3_gguf": ("data.merge_system_into_first_user=true", "model.stop_tokens=['<|end|>','<|endoftext|>']")
}
QUICK = (
    "data.max_train_rows=32",
    "data.max_eval_rows=8",
    "sft.max_steps=2",
    "sft.per_device_train_batch_size=8",
    "sft.eval_strategy=no",
    "sft.save_strategy=no",
    "sft.disable_tqdm=true",
    "eval.generate_samples=2",
    "eval.max_new_tokens=4",
)


@pytest.mark.parametrize("family", END_OF_TURN)
def test_trains_registers_passes_parity_and_serves(chat_family, tmp_path, family):
    cfg = compose_config(
        f"model.name_or_path={chat_family(family)}",
        f"model.short_name=tiny-{family}",
        *QUICK,
        *OVERRIDES.get(family, ()),
        tmp=tmp_path,
    )
    metrics = run(cfg)
    assert {"exact_match_after", "stop_rate_after", "eval_loss"} <= set(metrics)
    summary = json.loads((tmp_path / "outputs" / "run" / "summary.json").read_text())
    model_uri = f"models:/{summary['registered_model']}"
    tracking_uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"

    mlflow.set_tracking_uri(tracking_uri)
    try:
        training = parity.download_training_tokenizer_info(summary["mlflow_run_id"], tmp_path / "tokenizer")
        notes = parity.check(ChatModel(model_uri), training)
    finally:
        mlflow.set_tracking_uri(None)
    assert f"answers stop at '{END_OF_TURN[family]}', as in training" in notes

    with serve_in_background(
        model_uri, env={"MLFLOW_TRACKING_URI": tracking_uri}
    ) as url:  # checks parity too
        request = {
            "messages": [{"role": "user", "content": "Name the next weekday after Monday."}],
            "max_tokens": 4,
        }
        post = urllib.request.Request(
            f"{url}/score", json.dumps(request).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=120) as response:
            answer = json.loads(response.read())
    (choice,) = answer["choices"]
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
    assert answer["usage"]["completion_tokens"] <= 4
