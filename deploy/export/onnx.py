"""ONNX Runtime GenAI through its own model builder (`python -m onnxruntime_genai.models.builder`).

The builder reads config.json itself, and onnxruntime-genai 0.18.0 trips on two shapes that
transformers 5 writes: `KeyError: 'type'` when the rope parameters hold only `rope_type`
(upstream PR #2609), and `KeyError: 'multi_cache'` when max_position_embeddings differs from
original_max_position_embeddings but the rope type is not LongRoPE. It is handed a copy of the
directory with config.json normalised for it; the weights are linked, not copied. A version logged
as an adapter (`logger.peft_save=adapter`) is exported in float precisions as its base model plus
`adapter.onnx_adapter` (`--extra_options adapter_path=`, then deploy/export/onnx_adapter.py); int4
quantizes whatever is in the graph, so there the merged model is exported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.export.errors import ExportRefused, ExportSetupError
from deploy.export.files import chat_template, is_longrope, read_json
from deploy.export.onnx_adapter import extract_adapter
from deploy.export.source import Source

PRECISIONS = ("fp32", "fp16", "int4")
ADAPTER_PRECISIONS = ("fp32", "fp16")  # the LoRA weights stay float, swappable at run time
EXECUTION_PROVIDERS = ("cpu", "cuda")


def exports_adapter(source: Source, precision: str) -> bool:
    """Whether the export is the base model plus a runtime adapter (else the merged model)."""
    return source.adapter_dir is not None and precision in ADAPTER_PRECISIONS


def builder_config(config: dict) -> dict:
    """config.json as onnxruntime-genai 0.18.0's builder can read it (see the module docstring)."""
    config = copy_dict(config)
    for key in ("rope_parameters", "rope_scaling"):
        rope = config.get(key)
        if isinstance(rope, dict) and "rope_type" in rope:
            rope.setdefault("type", rope["rope_type"])
    if not is_longrope(config):
        # Equal, not removed: Phi3Config fills a missing original_max_position_embeddings with 4096.
        config["original_max_position_embeddings"] = config["max_position_embeddings"]
        for key in ("rope_parameters", "rope_scaling"):
            if isinstance(config.get(key), dict):
                config[key].pop("original_max_position_embeddings", None)
    return config


def copy_dict(value: dict) -> dict:
    return json.loads(json.dumps(value))


def builder_input(model_dir: Path, staging: Path) -> Path:
    """A copy of `model_dir` (files linked) whose config.json the builder can read."""
    return linked_copy(
        model_dir, staging, {"config.json": builder_config(read_json(model_dir / "config.json"))}
    )


def linked_copy(model_dir: Path, staging: Path, rewritten: dict[str, dict]) -> Path:
    """`model_dir` as links in `staging`, but for the JSON files `rewritten` (name -> content)."""
    staging.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.name not in rewritten and not (staging / path.name).exists():
            os.symlink(path.resolve(), staging / path.name)
    for name, content in rewritten.items():
        (staging / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    return staging


def export_onnx(source: Source, out: Path, precision: str, execution_provider: str, work: Path) -> Path:
    """The ONNX Runtime GenAI model directory `out` (its files are checked by files.missing_in_export)."""
    if precision not in PRECISIONS or execution_provider not in EXECUTION_PROVIDERS:
        raise ExportSetupError(
            f"export.precision={precision} export.execution_provider={execution_provider}: ONNX takes "
            f"precision {'|'.join(PRECISIONS)} and execution_provider {'|'.join(EXECUTION_PROVIDERS)}"
        )
    adapter = exports_adapter(source, precision)
    model_dir = source.base_dir if adapter else source.merged_dir
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-m",
        str(builder_input(model_dir, work / "builder-input")),
    ]
    command += ["-o", str(out), "-p", precision, "-e", execution_provider, "-c", str(work / "builder-cache")]
    if adapter:
        command += ["--extra_options", f"adapter_path={source.adapter_dir}"]
    run_tool(command, "onnxruntime-genai's model builder")
    if adapter:
        extract_adapter(out)
    copy_chat_template(model_dir, out)
    return out


def copy_chat_template(model_dir: Path, out: Path) -> None:
    """onnxruntime-genai reads the template from tokenizer_config.json; transformers 5 keeps it in
    chat_template.jinja, which the builder does not copy. Put it where the runtime looks."""
    template = chat_template(model_dir)
    config_path = out / "tokenizer_config.json"
    if template and config_path.is_file():
        config = read_json(config_path)
        if config.get("chat_template") != template:
            config["chat_template"] = template
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    if (model_dir / "chat_template.jinja").is_file():
        shutil.copy(model_dir / "chat_template.jinja", out / "chat_template.jinja")


def run_tool(command: list[str], name: str) -> None:
    """Run a converter; its last output lines become the error when it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        if "No module named" in tail:
            raise ExportSetupError(f"{name} is not installed: `make setup` installs the export extra\n{tail}")
        raise ExportRefused(f"{name} failed (exit {done.returncode}):\n{tail}")
