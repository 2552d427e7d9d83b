"""TRL's `SFTConfig` from the composed config: shared by the recipe and the benchmark.

Imports neither mlflow nor the recipe, so the benchmark runs on a GPU box that has only the
training stack (bench/gpu_kit.txt).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from trl import SFTConfig


def sft_args(cfg: DictConfig) -> SFTConfig:
    return SFTConfig(**sft_kwargs(cfg))


def sft_kwargs(cfg: DictConfig) -> dict:
    """SFTConfig's arguments: `cfg.sft` plus what the recipe sets (also the base of DPO's and KTO's)."""
    kwargs = OmegaConf.to_container(cfg.sft, resolve=True, enum_to_str=True)
    if not torch.accelerator.is_available():
        # Training runs on the CPU anyway; saying so makes accelerate pick gloo when torchrun starts
        # several processes (without it, each process would train alone as rank 0).
        kwargs["use_cpu"] = True
    # The prepared data carry their labels (train.prepare masks the prompts when
    # sft.assistant_only_loss is on, for any chat template), and TRL trains on a dataset's labels
    # as they are. Told the option, TRL would look up a training template of its own again and
    # refuse every template it does not ship.
    kwargs["assistant_only_loss"] = False
    return {
        "output_dir": str(Path(cfg.paths.output_dir) / "checkpoints"),
        "report_to": "none",  # MLflow: train.tracking's callback and the recipe's stages
        "run_name": cfg.logger.run_name,
        **kwargs,
    }
