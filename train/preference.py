"""`method=dpo|kto`: TRL's DPOTrainer / KTOTrainer in place of SFTTrainer, from the same config.

The trainer's arguments are the shared training arguments (`sft.<field>` that transformers'
`TrainingArguments` defines: learning rate, batch, precision, checkpointing; a profile sets them
once for every method) plus the method's own `dpo.<field>` / `kto.<field>`. The reference the
rewards are measured against is always the starting model: with an adapter, the same weights with
the adapter switched off (TRL's `ref_model=None` with a peft config: no second copy); for a full
fine-tune a second copy, or with `precompute_ref_log_probs` the log-probabilities the model gives
before its first step (the estimate counts either).
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from train.config import Objective, shared_training_keys
from train.sft import sft_kwargs

# TrainingArguments' fields whose default the method's TRL config sets for its own reasons: KTO
# reads batches in order (train_sampling_strategy=sequential) to pair completions for its KL term.
METHOD_OWNED = {Objective.kto: ("train_sampling_strategy",), Objective.dpo: ()}
# TRL's held-out reward metrics (eval_ prefixed by the Trainer) and the names the summary, the MLflow
# run and the registered version's tags give them.
REWARD_METRICS = {"eval_rewards/accuracies": "reward_accuracy", "eval_rewards/margins": "reward_margin"}


def preference_args(cfg: DictConfig):
    """TRL's DPOConfig or KTOConfig: the shared `sft.*` training arguments plus `dpo.*`/`kto.*`."""
    from trl import DPOConfig, KTOConfig

    objective = Objective(cfg.method)
    base = sft_kwargs(cfg)  # as the recipe sets them for SFT (output_dir, use_cpu, ...)
    keep = shared_training_keys() - set(METHOD_OWNED[objective])
    shared = {k: v for k, v in base.items() if k in keep and not k.startswith("_")}
    own = OmegaConf.to_container(cfg[str(objective)], resolve=True, enum_to_str=True)
    config_class = DPOConfig if objective == Objective.dpo else KTOConfig
    return config_class(**{**shared, **own})


def make_trainer(cfg: DictConfig, args, model, processing_class, splits, peft_config, callbacks):
    """The method's TRL trainer over the prepared preference rows (columns TRL does not read stay out)."""
    from trl import DPOTrainer, KTOTrainer

    objective = Objective(cfg.method)
    columns = (
        ("prompt", "chosen", "rejected") if objective == Objective.dpo else ("prompt", "completion", "label")
    )
    trainer_class = DPOTrainer if objective == Objective.dpo else KTOTrainer
    per_source = {k.split(":", 1)[1]: v for k, v in splits.items() if k.startswith("test:")}
    held_out = {n: v.select_columns(list(columns)) for n, v in per_source.items()}
    return trainer_class(
        model=model,
        ref_model=None,  # an adapter: switched off; a full fine-tune: a copy, or precomputed log-probs
        args=args,
        train_dataset=splits["train"].select_columns(list(columns)),
        eval_dataset=held_out or splits["test"].select_columns(list(columns)),
        processing_class=processing_class,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def reward_metrics(evaluated: dict[str, float], when: str) -> dict[str, float]:
    """`reward_accuracy_<when>` and `reward_margin_<when>` from a held-out evaluation, where measured."""
    return {
        f"{name}_{when}": float(evaluated[key])
        for key, name in REWARD_METRICS.items()
        if key in evaluated and not math.isnan(float(evaluated[key]))
    }
