"""The version as a plain Hugging Face directory, which both converters read.

The MLflow model is loaded once, checked as the servers load it (deploy.registry.load); its model
and tokenizer are written out with save_pretrained (config, safetensors, generation config with
the stop ids, tokenizer and chat template). A LoRA version (logged as an adapter) is written
twice: merged, for formats without adapters (GGUF), and as base + adapter, for ONNX Runtime
GenAI's adapters (`--extra_options adapter_path=`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from deploy.export.errors import ExportRefused
from deploy.export.files import missing_in_hf_dir


@dataclass(frozen=True)
class Source:
    merged_dir: Path  # the whole model (merged when the version is an adapter)
    base_dir: Path | None = None  # a LoRA version: its base model ...
    adapter_dir: Path | None = None  # ... and the adapter, unmerged


def is_adapter(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def write_source(chat_model, out: Path) -> Source:
    """`chat_model`'s model and tokenizer as Hugging Face directories under `out`, checked."""
    model, tokenizer = chat_model.model, chat_model.tokenizer
    if not is_adapter(model):
        save(model, tokenizer, out / "hf")
        return checked(Source(out / "hf"))
    model.save_pretrained(out / "adapter")  # adapter_config.json + adapter_model.safetensors
    save(copy.deepcopy(model).merge_and_unload(), tokenizer, out / "hf")
    save(copy.deepcopy(model).unload(), tokenizer, out / "base")
    return checked(Source(out / "hf", out / "base", out / "adapter"))


def save(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def checked(source: Source) -> Source:
    missing = [line for d in (source.merged_dir, source.base_dir) if d for line in missing_in_hf_dir(d)]
    if missing:
        raise ExportRefused("the model directory lacks what a converter needs: " + "; ".join(missing))
    return source
