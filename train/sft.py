"""TRL's `SFTConfig` from the composed config: shared by the recipe and the benchmark.

Imports neither mlflow nor the recipe, so the benchmark runs on a GPU box that has only the
training stack (bench/gpu_kit.txt).
"""

from __future__ import annotations

import sys
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
    if kwargs.get("disable_tqdm") is None:  # progress bars only on a terminal, not in a log file
        kwargs["disable_tqdm"] = not sys.stderr.isatty()
    return {
        "output_dir": str(Path(cfg.paths.output_dir) / "checkpoints"),
        "report_to": "none",  # MLflow: train.tracking's callback and the recipe's stages
        "run_name": cfg.logger.run_name,
        **kwargs,
    }


def steps_for_token_budget(args, token_budget: int, stats: dict) -> int:
    """Optimizer steps that train on about `token_budget` tokens of the prepared training rows:
    the budget over (tokens per sequence x sequences per optimizer step), at least one. A sequence
    is a row, or with packing a pack of rows filled up to `args.max_length` (set from the data
    when sft.max_length is null: train.lengths)."""
    mean_row_tokens = stats["tokens"]["train"] / max(stats["train"], 1)
    per_sequence = args.max_length if args.packing else mean_row_tokens
    sequences_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return max(1, round(token_budget / (per_sequence * sequences_per_step)))
