"""`python -m deploy action=export format=gguf`: llama.cpp's converter, answered in llama.cpp
(llama-cpp-python, built once by deploy/export/build_llama_cpp.sh: `make test` runs it)."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader
from mlflow.tracking import MlflowClient

from tests.conftest import run_module
from tests.deploy.export.conftest import export_args, gguf_converter, scale_long_factors


def test_gguf_f16_of_the_tiny_longrope_model_passes_and_keeps_its_factors(
    tiny_longrope_smollm2_tokenizer, tmp_path
):
    registered = tiny_longrope_smollm2_tokenizer
    # At the default export.min_agreement (0.99): teacher forcing scores every position, so a near tie
    # costs one token, not the rest of its answer.
    done = run_module("deploy", *export_args(registered, tmp_path, "format=gguf"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED (near rules)" in done.stdout
    assert "2 prompts past the LongRoPE switch" in done.stdout
    gguf = tmp_path / "exports" / "tiny-longrope-smol-v1" / "gguf-f16" / "model.gguf"
    names = {tensor.name for tensor in GGUFReader(gguf).tensors}
    assert {"rope_factors_short.weight", "rope_factors_long.weight"} <= names
    tags = MlflowClient(registered.tracking_uri).get_model_version("tiny-longrope-smol", "1").tags
    assert tags["export.gguf-f16.status"] == "passed"


def test_a_gguf_with_long_rope_factors_scaled_by_one_and_a_half_is_refused(
    tiny_longrope_smollm2_tokenizer, tmp_path
):
    registered = tiny_longrope_smollm2_tokenizer
    broken = gguf_converter(
        scale_long_factors(Path(registered.model_dir), tmp_path / "hf"), tmp_path / "broken.gguf"
    )
    args = export_args(registered, tmp_path, "format=gguf", f"export.from_path={broken}", "export.log=false")
    done = run_module("deploy", *args)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "REFUSED" in done.stdout
    assert "refused by the parity gate (not logged)" in done.stderr
