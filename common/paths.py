"""Where the checkout is and where built assets are cached: one definition for every layer."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """$FINETUNE_PHI_CACHE, else $XDG_CACHE_HOME/finetune-phi (~/.cache/finetune-phi): the tiny
    model, prepared data, and the Azure inference server's venv, each built once."""
    if os.environ.get("FINETUNE_PHI_CACHE"):
        return Path(os.environ["FINETUNE_PHI_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune-phi"
