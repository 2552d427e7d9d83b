"""A registered tiny Phi-3.5-shaped model with LongRoPE, and exports of it made by the tools themselves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.paths import PROJECT_ROOT
from tests.deploy.conftest import Registered, log_model

HELD_OUT = str(PROJECT_ROOT / "train" / "assets" / "sample_test.jsonl")


@pytest.fixture(scope="session")
def tiny_longrope(tmp_path_factory, tiny_cache) -> Registered:
    """tests/tiny_families.py's LongRoPE model (short factors to 256 positions), registered as
    `tiny-longrope` version 1 by the recipe's logging code."""
    from tests.tiny_families import build_tiny_longrope

    model_dir = build_tiny_longrope(tmp_path_factory.mktemp("tiny-longrope") / "model")
    return log_model(tmp_path_factory.mktemp("registered-longrope"), str(model_dir), name="tiny-longrope")


def export_args(registered: Registered, output_root: Path, *extra: str) -> list[str]:
    """`python -m deploy action=export` arguments for `registered`'s latest version."""
    name = registered.uri.split("/")[1]
    return [
        "action=export",
        f"model.name={name}",
        f"tracking_uri={registered.tracking_uri}",
        f"eval.source={HELD_OUT}",
        f"output_root={output_root}",
        *extra,
    ]


def scale_long_factors(model_dir: Path, out_dir: Path, factor: float = 1.5) -> Path:
    """A copy of `model_dir` whose LongRoPE long factors are multiplied by `factor`: every file a
    runtime needs is there and well formed, only the answers past the switch change."""
    shutil.copytree(model_dir, out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    rope = config["rope_parameters"]
    rope["long_factor"] = [f * factor for f in rope["long_factor"]]
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


def onnx_builder(model_dir: Path, out_dir: Path) -> Path:
    """onnxruntime-genai's model builder run by hand (fp32, CPU), as a user would outside the project."""
    config = json.loads((model_dir / "config.json").read_text())
    config["rope_parameters"]["type"] = config["rope_parameters"]["rope_type"]  # its KeyError: 'type'
    (model_dir / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(model_dir)]
    command += ["-o", str(out_dir), "-p", "fp32", "-e", "cpu", "-c", str(out_dir.parent / "builder-cache")]
    subprocess.run(command, check=True, capture_output=True)
    # the builder does not copy chat_template.jinja; put the template where onnxruntime-genai reads it
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = (model_dir / "chat_template.jinja").read_text()
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return out_dir


@pytest.fixture(scope="session")
def smollm2_registered(tmp_path_factory, smollm2) -> Registered:
    """SmolLM2-135M-Instruct (the real model of conf/model/smollm2.yaml) registered as `smollm2` v1."""
    return log_model(tmp_path_factory.mktemp("registered-smollm2"), smollm2, name="smollm2")


@pytest.fixture(scope="session")
def tiny_longrope_smollm2_tokenizer(tmp_path_factory, smollm2) -> Registered:
    """The tiny LongRoPE model with SmolLM2's tokenizer (a vocabulary llama.cpp's converter knows) and
    its stop (<|im_end|>), registered as `tiny-longrope-smol` version 1."""
    from transformers import AutoTokenizer

    from tests.tiny_families import build_tiny_longrope

    out = tmp_path_factory.mktemp("tiny-longrope-smol") / "model"
    model_dir = build_tiny_longrope(out, AutoTokenizer.from_pretrained(smollm2), ["<|im_end|>"])
    return log_model(tmp_path_factory.mktemp("registered-smol"), str(model_dir), name="tiny-longrope-smol")


def gguf_converter(model_dir: Path, out_file: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py run by hand (F16), as a user would outside the project."""
    from deploy.export.gguf import converter

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"  # its Phi-3 path reads a BPE vocabulary only so
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    command = [
        sys.executable,
        str(converter()),
        str(model_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        "f16",
    ]
    subprocess.run(command, check=True, capture_output=True)
    return out_file
