"""GGUF models (`model.gguf_file=`): converted once into a plain Hugging Face directory, cached.

A GGUF file holds a quantized checkpoint and its tokenizer. transformers reads it
(`from_pretrained(dir, gguf_file=..., quantization_config=GgufConfig(..., dequantize=True))`),
but keeps the quantized blocks unless told to dequantize, and then refuses to `save_pretrained`;
loading also takes about a minute on a 2-core machine. So a GGUF file is dequantized to float32
once and saved as an ordinary model directory (config.json, model.safetensors, tokenizer, chat
template, generation config) in the cache, keyed by a hash of the file, exactly as the tiny
model is built and cached (train/tiny_model.py). From then on every layer (training, estimate,
benchmarks, serving) loads a plain directory: `resolve_gguf` points `model.name_or_path` at it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from common.paths import cache_dir
from train.errors import ConfigError

log = logging.getLogger(__name__)

BUILD = 1  # how a directory is made from the file; bump to rebuild every cached conversion


def gguf_path(name_or_path: str, gguf_file: str) -> Path:
    """The file `model.gguf_file` names: absolute, or relative to `model.name_or_path` (a directory)."""
    path = Path(gguf_file).expanduser()
    if not path.is_absolute():
        path = Path(name_or_path).expanduser() / path
    if not path.is_file():
        raise ConfigError(
            f"model.gguf_file={gguf_file}: no such file ({path}); give an absolute path, or a path "
            "relative to model.name_or_path (the directory holding it)"
        )
    return path


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(gguf: Path, out_dir: Path) -> Path:
    """Dequantize `gguf` to float32 and save it, with its tokenizer, as a model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    where, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        where,
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=name, dequantize=True),
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def converted_dir(gguf: Path, cache_root: str | os.PathLike | None = None) -> str:
    """The cached model directory converted from `gguf`, converting it on first use (about a
    minute). Written to a temporary sibling and renamed, so concurrent users never see half of it."""
    root = Path(cache_root) if cache_root else cache_dir()
    target = root / f"gguf-{gguf.stem}-{file_digest(gguf)[:12]}-{BUILD}"
    if (target / "config.json").exists():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a model directory in %s (once; about a minute)", gguf, target)
    staging = Path(tempfile.mkdtemp(prefix=".gguf-", dir=root))
    staging.chmod(0o755)  # mkdtemp's 0700 would keep the shared cache from other users
    try:
        convert(gguf, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def resolve_gguf(model_cfg) -> None:
    """With `model.gguf_file` set, point `model.name_or_path` at the converted directory and clear
    `gguf_file`, so everything downstream (and the logged config) sees an ordinary model."""
    if not model_cfg.get("gguf_file"):
        return
    model_cfg.name_or_path = converted_dir(gguf_path(model_cfg.name_or_path, model_cfg.gguf_file))
    model_cfg.gguf_file = None
