"""The SFT recipe: one TRL SFTTrainer run, tracked and registered in MLflow.

Features and the keys that control them:
- model: hub id or local directory (`model.name_or_path`), attention (`model.attn_implementation`:
  auto = flash_attention_2 if installed, else sdpa), dtype, a dedicated pad token.
- data: ultrachat-style `messages` from local files or the hub (`data=...`), with an empty
  system turn added where missing (`model.add_empty_system_turn`).
- adapters: `peft=none|lora|qlora|dora` and `peft.<field>`; QLoRA refuses to start
  without CUDA before loading anything.
- training: every TRL `SFTConfig` field as `sft.<field>` (packing, assistant_only_loss,
  gradient_checkpointing, bf16, eval_strategy, ...).
- tracking: params (bounded for Azure ML), metrics, resolved config, chat template,
  loss curve, held-out answers, and the model as an MLflow `llm/v1/chat` model,
  registered under `logger.registered_model_name` and tagged with git sha, overrides,
  data hash and eval metrics.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from train import data, evaluate, model, tracking

log = logging.getLogger(__name__)


def sft_args(cfg: DictConfig) -> SFTConfig:
    kwargs = OmegaConf.to_container(cfg.sft, resolve=True)
    return SFTConfig(
        output_dir=str(Path(cfg.paths.output_dir) / "checkpoints"),
        report_to="none",  # MLflow is attached explicitly below
        run_name=cfg.logger.run_name,
        **kwargs,
    )


def sft_defaults() -> dict:
    """TRL's defaults for every sft key (to log only what a config changes)."""
    from train.config import sft_schema

    return OmegaConf.to_container(OmegaConf.structured(sft_schema()))


def _overrides(cfg: DictConfig) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join(HydraConfig.get().overrides.task)
    except ValueError:  # composed outside a Hydra app (tests, notebooks)
        return ""


def run(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune `cfg.model` on `cfg.data`; return the final metrics."""
    model.check_peft_hardware(cfg.peft)
    set_seed(cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = model.load_tokenizer(cfg.model)
    splits = data.load_splits(cfg.data, cfg.model, cfg.seed, output_dir / "data")
    lm = model.load_model(cfg.model, cfg.peft, tokenizer)
    args = sft_args(cfg)
    trainer = SFTTrainer(
        model=lm,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["test"],
        processing_class=tokenizer,
        peft_config=model.lora_config(cfg.peft),
        callbacks=[tracking.MetricsOnlyMLflowCallback()],
    )

    experiment_id = tracking.start_experiment(cfg.logger, Path(cfg.paths.output_root) / "mlartifacts")
    is_main = trainer.is_world_process_zero()
    metrics: dict[str, float] = {}
    with mlflow.start_run(experiment_id=experiment_id, run_name=cfg.logger.run_name) as active:
        mlflow.set_tags(
            {"profile": str(cfg.get("profile")), "hydra.overrides": _overrides(cfg), **cfg.logger.tags}
        )
        mlflow.log_params(tracking.flatten_params(cfg, sft_defaults()))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
        tracking.log_tokenizer_artifacts(tokenizer, output_dir / "tokenizer_info")

        held_out = splits["test"]["messages"]
        n_gen = cfg.eval.generate_samples
        if n_gen:
            log.info("answering %d held-out prompts before training", n_gen)
            metrics["exact_match_before"], _ = evaluate.exact_match_eval(
                trainer.model, tokenizer, held_out, n_gen, cfg.eval.max_new_tokens
            )

        log.info("training")
        started = time.perf_counter()
        train_result = trainer.train()
        metrics.update({k: float(v) for k, v in train_result.metrics.items()})
        metrics["train_wall_seconds"] = time.perf_counter() - started
        metrics.update({k: float(v) for k, v in trainer.evaluate().items()})
        first_loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
        last_loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]
        metrics["train_loss_first"], metrics["train_loss_last"] = first_loss, last_loss

        if n_gen:
            log.info("answering %d held-out prompts after training", n_gen)
            metrics["exact_match_after"], rows = evaluate.exact_match_eval(
                trainer.model, tokenizer, held_out, n_gen, cfg.eval.max_new_tokens
            )
            mlflow.log_table(
                {k: [r[k] for r in rows] for k in ("prompt", "reference", "answer")}, "eval/answers.json"
            )
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(
            str(tracking.log_loss_curve(trainer.state.log_history, output_dir / "loss_curve.png"))
        )

        version = None
        if cfg.logger.log_model and is_main:
            final = trainer.model
            with_peft = cfg.peft.method != "none"
            if with_peft and cfg.logger.peft_save == "merged":
                final = final.merge_and_unload()
            final.config.use_cache = True  # gradient checkpointing turned it off
            tags = {
                "git_sha": tracking.git_sha(Path(cfg.paths.root_dir)),
                "hydra_overrides": _overrides(cfg),
                "data_hash": data.data_fingerprint(splits),
                "mlflow_run_id": active.info.run_id,
                **{k: f"{v:.6g}" for k, v in metrics.items() if k.startswith(("eval_", "exact_match"))},
            }
            log.info("logging the model to MLflow as an llm/v1/chat model")
            _, version = tracking.log_chat_model(
                final, tokenizer, cfg.logger, with_peft and cfg.logger.peft_save == "adapter", tags
            )

    summary = {
        "run_dir": str(output_dir),
        "mlflow_run_id": active.info.run_id,
        "tracking_uri": mlflow.get_tracking_uri(),
        "registered_model": f"{version.name}/{version.version}" if version else None,
        "metrics": metrics,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    if is_main:
        print_summary(summary)
    return metrics


def print_summary(summary: dict) -> None:
    m = summary["metrics"]
    lines = [
        "",
        "Fine-tune finished.",
        f"  run dir        {summary['run_dir']}",
        f"  train loss     {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}",
        f"  eval loss      {m.get('eval_loss', float('nan')):.3f}",
    ]
    if "exact_match_after" in m:
        lines.append(
            f"  held-out exact match  {m['exact_match_before']:.0%} before -> {m['exact_match_after']:.0%} after"
        )
    lines += [
        f"  MLflow run     {summary['mlflow_run_id']}",
        f"  browse runs    mlflow ui --backend-store-uri {summary['tracking_uri']}",
    ]
    if summary["registered_model"]:
        name, version = summary["registered_model"].split("/")
        lines.append(f"  registered     models:/{name}/{version}")
        lines.append(
            f"  chat with it   python -m deploy action=chat model.name={name} model.version={version}"
        )
    print("\n".join(lines))
