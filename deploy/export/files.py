"""The files a runtime needs and a converter is known to drop, checked before a runtime loads them.

Converters drop these silently: tokenizer files (Unsloth #2098, #3504), Phi-3.5's LongRoPE
factors (llama.cpp#24820, configs saved by transformers 5), the generation config's stop ids and
the chat template (transformers 5 writes it to chat_template.jinja, beside tokenizer_config.json).
Each check returns one line naming what is missing and where; an empty list means all there.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def rope_parameters(config: dict) -> dict:
    """transformers 5's `rope_parameters`, or an older config's `rope_scaling` (None: plain RoPE)."""
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def is_longrope(config: dict) -> bool:
    rope = rope_parameters(config)
    return (rope.get("rope_type") or rope.get("type")) in ("longrope", "su")


def original_context(config: dict) -> int | None:
    """Positions the short LongRoPE factors hold for (None: not a LongRoPE model)."""
    if not is_longrope(config):
        return None
    rope = rope_parameters(config)
    return rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")


def chat_template(model_dir: Path) -> str | None:
    """The chat template as transformers 5 saves it (chat_template.jinja) or older ones did."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return read_json(model_dir / "tokenizer_config.json").get("chat_template")


def stop_ids(model_dir: Path) -> list[int]:
    eos = read_json(model_dir / "generation_config.json").get("eos_token_id")
    return sorted({eos} if isinstance(eos, int) else set(eos or []))


def missing_in_hf_dir(model_dir: Path) -> list[str]:
    """What a converter reads from the Hugging Face directory, missing there."""
    config = read_json(model_dir / "config.json")
    missing = [f"{model_dir}/config.json" for _ in [0] if not config]
    if not any(model_dir.glob("*.safetensors")):
        missing.append(f"{model_dir}: no *.safetensors weights")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer.model").is_file():
        missing.append(f"{model_dir}: no tokenizer (tokenizer.json or tokenizer.model)")
    if not chat_template(model_dir):
        missing.append(f"{model_dir}: no chat template (chat_template.jinja or tokenizer_config.json)")
    if not stop_ids(model_dir):
        missing.append(f"{model_dir}/generation_config.json: no eos_token_id (the stop ids)")
    if is_longrope(config):
        missing += missing_rope_factors(config, f"{model_dir}/config.json")
    return missing


def missing_rope_factors(config: dict, where: str) -> list[str]:
    """LongRoPE needs one short and one long factor per rotary frequency pair, and the switch point."""
    rope = rope_parameters(config)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    pairs = int(head_dim * rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) // 2
    missing = [
        f"{where}: rope {name} has {len(rope.get(name) or [])} values, the model needs {pairs}"
        for name in ("short_factor", "long_factor")
        if len(rope.get(name) or []) != pairs
    ]
    if not original_context(config):
        missing.append(f"{where}: no original_max_position_embeddings (where LongRoPE switches factors)")
    return missing


def missing_in_onnx_dir(out: Path, template: str, stops: list[int]) -> list[str]:
    """What onnxruntime-genai loads: its config with the stop ids, the graph, the tokenizer and template."""
    genai = read_json(out / "genai_config.json")
    missing = [
        f"{out}/{name}"
        for name in ("genai_config.json", "model.onnx", "tokenizer.json")
        if not (out / name).is_file()
    ]
    eos = genai.get("model", {}).get("eos_token_id")
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    if genai and not set(stops) <= eos:
        missing.append(f"{out}/genai_config.json: eos_token_id {sorted(eos)} lacks the stop ids {stops}")
    if read_json(out / "tokenizer_config.json").get("chat_template") != template:
        missing.append(f"{out}/tokenizer_config.json: the chat template is missing or not the model's")
    return missing


def missing_in_gguf(path: Path, config: dict, template: str, stops: list[int]) -> list[str]:
    """What llama.cpp reads from the GGUF: the template, a stop id, and LongRoPE's factor tensors."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("tokenizer.ggml.tokens")
    }
    missing = []
    if fields.get("tokenizer.chat_template") != template:
        missing.append(f"{path}: tokenizer.chat_template is missing or not the model's chat template")
    if fields.get("tokenizer.ggml.eos_token_id") not in stops:
        missing.append(
            f"{path}: tokenizer.ggml.eos_token_id {fields.get('tokenizer.ggml.eos_token_id')} is not a stop id {stops}"
        )
    if is_longrope(config):
        names = {tensor.name for tensor in reader.tensors}
        missing += [
            f"{path}: no {name} tensor (LongRoPE factors)"
            for name in ("rope_factors_short.weight", "rope_factors_long.weight")
            if name not in names
        ]
    return missing


def missing_in_export(fmt: str, artifact: Path, model_dir: Path, adapter: bool = False) -> list[str]:
    """What the export at `artifact` lacks of `model_dir`'s template, stop ids and rope factors."""
    if not artifact.exists():
        return [f"{artifact}: no such file or folder"]
    template, stops = chat_template(model_dir), stop_ids(model_dir)
    if fmt == "onnx":
        missing = missing_in_onnx_dir(artifact, template, stops)
        if adapter and not list(artifact.glob("*.onnx_adapter")):
            missing.append(f"{artifact}: no .onnx_adapter for the version's LoRA adapter")
        return missing
    return missing_in_gguf(artifact, read_json(model_dir / "config.json"), template, stops)
