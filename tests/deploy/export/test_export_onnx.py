"""`python -m deploy action=export format=onnx` on the tiny LongRoPE model: the ONNX Runtime GenAI
export answers in onnxruntime-genai as the MLflow model does (greedy, on both sides of the
LongRoPE switch) and is logged; a broken one is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import run_module
from tests.deploy.export.conftest import export_args, onnx_builder, scale_long_factors


def test_onnx_fp32_agrees_token_for_token_on_both_sides_of_the_switch_and_is_logged(tiny_longrope, tmp_path):
    done = run_module("deploy", *export_args(tiny_longrope, tmp_path, "format=onnx"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED (exact rules)" in done.stdout
    client = MlflowClient(tiny_longrope.tracking_uri)
    tags = client.get_model_version("tiny-longrope", "1").tags
    assert tags["export.onnx-fp32.status"] == "passed"
    assert tags["export.onnx-fp32.agreement"] == "1.0000"
    logged = {a.path for a in client.list_artifacts(tiny_longrope.run_id, "exports/onnx-fp32")}
    assert {"exports/onnx-fp32/model.onnx", "exports/onnx-fp32/genai_config.json"} <= logged
    parity = client.download_artifacts(tiny_longrope.run_id, "exports/onnx-fp32/parity.json", str(tmp_path))
    table = json.loads(Path(parity).read_text())
    assert table["summary"]["long_prompts"] == 2
    assert {row["side"] for row in table["rows"]} == {"short", "long"}
    assert all(row["prompt_tokens"] > 256 for row in table["rows"] if row["side"] == "long")
    assert all(
        row["prompt_tokens"] + row["reference_tokens"] <= 256
        for row in table["rows"]
        if row["side"] == "short"
    )


def test_long_rope_factors_scaled_by_one_and_a_half_are_refused(tiny_longrope, tmp_path):
    """Every file is there and well formed, so only the answers past the switch can tell."""
    broken = onnx_builder(
        scale_long_factors(Path(tiny_longrope.model_dir), tmp_path / "hf"), tmp_path / "onnx"
    )
    args = export_args(
        tiny_longrope, tmp_path, "format=onnx", f"export.from_path={broken}", "export.log=false"
    )
    done = run_module("deploy", *args)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "REFUSED: float32 must agree token for token" in done.stdout
    assert "refused by the parity gate (not logged)" in done.stderr
    # the answers below the switch still agree: the table shows where it broke
    assert "2 prompts past the LongRoPE switch" in done.stdout


def test_an_export_without_its_tokenizer_is_refused_before_the_runtime_loads_it(tiny_longrope, tmp_path):
    export = onnx_builder(
        scale_long_factors(Path(tiny_longrope.model_dir), tmp_path / "hf", 1.0), tmp_path / "onnx"
    )
    (export / "tokenizer.json").unlink()
    shutil.rmtree(tmp_path / "hf")
    done = run_module(
        "deploy", *export_args(tiny_longrope, tmp_path, "format=onnx", f"export.from_path={export}")
    )
    assert done.returncode == 1
    assert f"{export}/tokenizer.json" in done.stderr.strip().splitlines()[-1]
    assert "gating" not in done.stdout  # refused before onnxruntime-genai loads it


def test_the_real_smollm2_exported_as_onnx_fp32_answers_token_for_token(smollm2_registered, tmp_path):
    args = export_args(smollm2_registered, tmp_path, "format=onnx", "export.max_rows=8", "export.log=false")
    done = run_module("deploy", *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED (exact rules)" in done.stdout
    assert "0 positions differ" in done.stdout


def test_a_lora_version_is_exported_as_its_base_model_plus_an_onnx_adapter_the_gate_activates(tmp_path):
    """`python -m train peft=lora logger.peft_save=adapter` keeps the adapter in the version; the ONNX
    export is the base model plus adapter.onnx_adapter, and answers as the MLflow model (PEFT) does."""
    import numpy as np
    import onnxruntime_genai as og

    trained = run_module(
        "train",
        *(
            "peft=lora",
            "logger.peft_save=adapter",
            "peft.lora_dropout=0",
            "logger.registered_model_name=tiny-lora",
        ),
        # a few steps at a high rate: the adapter must move greedy tokens for this test to mean anything
        *(
            "sft.max_steps=4",
            "sft.learning_rate=0.02",
            "eval.generate_samples=0",
            f"paths.output_root={tmp_path}",
        ),
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["action=export", "format=onnx", "model.name=tiny-lora", f"tracking_uri={tracking_uri}"]
    done = run_module("deploy", *args, "export.max_rows=8", f"output_root={tmp_path}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED (exact rules)" in done.stdout
    export = tmp_path / "exports" / "tiny-lora-v1" / "onnx-fp32"
    assert (
        MlflowClient(tracking_uri).get_model_version("tiny-lora", "1").tags["export.onnx-fp32.lora"]
        == "adapter file"
    )

    # The adapter matters: without it active (the base model) the argmax differs somewhere, so a gate
    # that forgot to activate it would refuse the export.
    model = og.Model(str(export))
    adapters = og.Adapters(model)
    adapters.load(str(export / "adapter.onnx_adapter"), "finetuned")
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.encode(
        tokenizer.apply_chat_template(
            json.dumps([{"role": "user", "content": "Name three colours."}]), add_generation_prompt=True
        )
    )

    def argmax(active: bool) -> np.ndarray:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + 1)
        generator = og.Generator(model, params)
        if active:
            generator.set_active_adapter(adapters, "finetuned")
        generator.append_tokens([prompt])
        return np.asarray(generator.get_output("logits"))[0].argmax(-1)

    assert (argmax(True) != argmax(False)).any()
