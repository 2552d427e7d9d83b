"""How long a training row may be: capped by a number, or taken from the data and the model.

`sft.max_length: 2048` (the GPU profiles: memory grows with it) caps every row: preparation
shortens or drops the longer ones (`data.length_policy`) and the trainer gets 2048.
`sft.max_length: null` (model=smollm2) means "from the data": preparation keeps rows up to the
model's context (the smaller of config.json's `max_position_embeddings` and the tokenizer's
`model_max_length`) under the same policy, and training runs at the longest kept row, so no row
is cut and a micro-batch is no longer than the data needs. TRL itself would take null as "never
truncate" and refuses it with packing, so the trainer always gets a number.
`data.max_length` (default `${sft.max_length}`) is what preparation caps at; null there is the
model's context too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig

from train import model

log = logging.getLogger(__name__)

# transformers' placeholder for "no limit given" (tokenization_utils_base.VERY_LARGE_INTEGER is 1e30).
_NO_LIMIT = 10**9


def model_context(model_cfg, tokenizer=None) -> int | None:
    """The model's context window: the smaller of config.json's and the tokenizer's limit, where known."""
    limits = [model.context_length(model_cfg)]
    if tokenizer is not None:
        limits.append(getattr(tokenizer, "model_max_length", None))
    known = [int(n) for n in limits if n and n < _NO_LIMIT]
    return min(known) if known else None


def preparation_limit(cfg: DictConfig, tokenizer) -> int | None:
    """The length preparation caps rows at: `data.max_length`, else the model's context."""
    if cfg.data.max_length is not None:
        return cfg.data.max_length
    return model_context(cfg.model, tokenizer)


def configured(cfg: DictConfig) -> int | None:
    """The max_length the run's trainer is configured with: `sft.max_length`, or `dpo.`/`kto.max_length`."""
    method = str(cfg.get("method", "sft"))
    return cfg[method].max_length if method != "sft" else cfg.sft.max_length


@dataclass(frozen=True)
class TrainingLength:
    """The max_length the trainer gets, and where it comes from (printed and logged)."""

    max_length: int
    from_data: bool
    stats: dict  # the prepared data's: tokens p95/max and `max_length`, the cap preparation used

    def describe(self) -> str:
        tokens = self.stats.get("tokens") or {}
        p95 = f"p95 {tokens['p95']}, " if "p95" in tokens else ""  # a mixture has no joint p95
        rows = f"kept rows: {p95}max {tokens.get('max')}"
        longest = {name: share.get("longest") for name, share in (self.stats.get("mixture") or {}).items()}
        if len(longest) > 1:  # a mixture (a rehearsal is one): which source sets it
            rows += " (" + ", ".join(f"{name} {n}" for name, n in longest.items()) + ")"
        cap = self.stats.get("max_length")
        if self.from_data:
            kept = (
                f"rows kept up to {cap} tokens, the model's context"
                if cap
                else "the model's context is unknown"
            )
            return f"{self.max_length} tokens, from the data: the longest kept row ({rows}; {kept})"
        return f"{self.max_length} tokens, sft.max_length ({rows})"


def training_length(cfg: DictConfig, stats: dict) -> TrainingLength:
    """The configured max_length when set, else the longest prepared row (stats.json's tokens.max)."""
    if configured(cfg) is not None:
        return TrainingLength(configured(cfg), False, stats)
    longest = (stats.get("tokens") or {}).get("max")
    if not longest:
        raise ValueError(
            "max_length from the data needs the prepared rows' token counts (stats.json tokens.max)"
        )
    return TrainingLength(int(longest), True, stats)


def set_training_length(args, cfg: DictConfig, stats: dict) -> TrainingLength:
    """Give the trainer's arguments (SFTConfig, DPOConfig, KTOConfig) their max_length; logged."""
    length = training_length(cfg, stats)
    args.max_length = length.max_length
    log.info("max_length %s", length.describe())
    return length
