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
  data hash and eval metrics. Only rank 0 talks to MLflow; a sweep point is a child run
  of the sweep's parent run (`train.sweep`).
- scale-out: unchanged under `torchrun` / `accelerate launch` (DDP, FSDP, DeepSpeed through
  `conf/accelerate/`); every rank uses the same run folder (`train.launch`).
- checkpoints: `sft.save_steps`/`save_total_limit`, `resume=auto|none|PATH`, and a checkpoint
  plus exit status 75 on SIGTERM/SIGINT (`train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from train import checkpoint, data, evaluate, launch, model, sweep, tracking
from train.prepare import preview

log = logging.getLogger(__name__)


def sft_args(cfg: DictConfig) -> SFTConfig:
    kwargs = OmegaConf.to_container(cfg.sft, resolve=True, enum_to_str=True)
    return SFTConfig(
        output_dir=str(Path(cfg.paths.output_dir) / "checkpoints"),
        report_to="none",  # MLflow is attached explicitly below
        run_name=cfg.logger.run_name,
        **kwargs,
    )


def sft_defaults() -> dict:
    """TRL's defaults for every sft key (to log only what a config changes)."""
    from train.config import sft_schema

    return OmegaConf.to_container(OmegaConf.structured(sft_schema()), enum_to_str=True)


def _overrides(cfg: DictConfig) -> str:
    """The command line's overrides; empty when composed outside a Hydra app (notebooks)."""
    return " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""


def _default_run_name(cfg: DictConfig) -> str:
    """The run folder's name; a sweep point's is `<sweep folder>/<point number>`."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{Path(hydra_cfg.sweep.dir).name}/{hydra_cfg.job.num}"
    return cfg.run_id


def _mlflow_run(cfg: DictConfig, output_dir: Path, resume_from: Path | None):
    """This run's MLflow run: a resume of this run folder continues the MLflow run it started;
    a sweep point is a child of the sweep's parent run."""
    experiment_id = tracking.start_experiment(cfg.logger, Path(cfg.paths.output_root) / "mlartifacts")
    record = output_dir / "mlflow_run.json"
    if resume_from is not None and resume_from.is_relative_to(output_dir) and record.exists():
        previous = json.loads(record.read_text(encoding="utf-8"))
        if previous["tracking_uri"] == mlflow.get_tracking_uri():
            log.info("continuing MLflow run %s", previous["run_id"])
            return mlflow.start_run(run_id=previous["run_id"]), True
    active = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=cfg.logger.run_name or _default_run_name(cfg),
        parent_run_id=os.environ.get(sweep.PARENT_RUN_ENV) or None,
    )
    record.write_text(
        json.dumps({"run_id": active.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}),
        encoding="utf-8",
    )
    return active, False


def _stop_interrupted(trainer: SFTTrainer, is_main: bool) -> None:
    """After a signal: the checkpoint is written; mark the MLflow run and exit with status 75."""
    step, latest = trainer.state.global_step, None
    if is_main:  # rank 0 writes trainer_state.json, so only it can tell the checkpoint is complete
        saved = checkpoint.complete_checkpoints(Path(trainer.args.output_dir))
        latest = saved[-1] if saved and checkpoint.checkpoint_step(saved[-1]) == step else None
        log.warning("stopped at step %d; checkpoint %s; rerun the same command to resume", step, latest)
        mlflow.set_tag("interrupted_at_step", str(step))
        mlflow.end_run(status="KILLED")
    raise checkpoint.TrainingInterrupted(latest, step)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune `cfg.model` on `cfg.data`; return the final metrics (on every rank)."""
    model.check_peft_hardware(cfg.peft)
    set_seed(cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = sft_args(cfg)
    if launch.world_size() != args.world_size:
        raise model.ConfigError(
            f"{launch.world_size()} processes were launched but the trainer sees {args.world_size}: every "
            "rank would act as rank 0. Without CUDA, multi-process training needs sft.use_cpu=true "
            "(+profile=cpu) for the gloo backend."
        )
    resume_from = checkpoint.find_resume_checkpoint(cfg.resume, Path(args.output_dir))

    tokenizer = model.load_tokenizer(cfg.model)
    with args.main_process_first(desc="preparing data"):  # one rank per node writes the files
        splits, prepared = data.load_splits(cfg, tokenizer)
    if cfg.preview:
        print(preview.render(cfg, tokenizer, prepared, cfg.preview))
    lm = model.load_model(cfg.model, cfg.peft, tokenizer)
    trainer = SFTTrainer(
        model=lm,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["test"],
        processing_class=tokenizer,
        peft_config=model.lora_config(cfg.peft),
        callbacks=[
            tracking.MetricsOnlyMLflowCallback(),
            checkpoint.ResumeGuard(resume_from),
        ],
    )
    stop_on_signal = checkpoint.StopOnSignal(trainer.accelerator)
    trainer.add_callback(stop_on_signal)

    # Only rank 0 talks to MLflow; the others train and evaluate (collectives) and skip the rest.
    is_main = trainer.is_world_process_zero()
    resumed_mlflow_run = False
    metrics: dict[str, float] = {}
    if is_main:
        mlflow_run, resumed_mlflow_run = _mlflow_run(cfg, output_dir, resume_from)
    else:
        mlflow_run = contextlib.nullcontext()
    with mlflow_run as active:
        if is_main:
            mlflow.set_tags(
                {
                    "profile": str(cfg.get("profile")),
                    "hydra.overrides": _overrides(cfg),
                    "run_id": cfg.run_id,
                    "world_size": str(args.world_size),
                    **cfg.logger.tags,
                }
            )
            if resume_from is not None:
                mlflow.set_tag("resumed_from", str(resume_from))
            if resumed_mlflow_run:  # params are logged once; a resume may change e.g. max_steps
                mlflow.log_text(
                    OmegaConf.to_yaml(cfg, resolve=True), f"config/resolved_resume_{resume_from.name}.yaml"
                )
            else:
                mlflow.log_params(tracking.flatten_params(cfg, sft_defaults()))
                mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config/resolved.yaml")
            tracking.log_tokenizer_artifacts(tokenizer, output_dir / "tokenizer_info")
            tracking.log_prepared_data(prepared)

        held_out = splits["test"]["messages"]
        # Generation runs on rank 0 alone: with sharded weights (FSDP, ZeRO-3) it would need
        # every rank, so it is skipped there.
        sharded = _weights_sharded(trainer)
        n_gen = 0 if sharded else cfg.eval.generate_samples
        if n_gen and is_main:
            log.info("answering %d held-out prompts before training", n_gen)
            metrics["exact_match_before"], _ = evaluate.exact_match_eval(
                trainer.model, tokenizer, held_out, n_gen, cfg.eval.max_new_tokens
            )
        trainer.accelerator.wait_for_everyone()

        log.info("training")
        started = time.perf_counter()
        train_result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if stop_on_signal.interrupted:
            _stop_interrupted(trainer, is_main)
        metrics.update({k: float(v) for k, v in train_result.metrics.items()})
        metrics["train_wall_seconds"] = time.perf_counter() - started
        metrics.update({k: float(v) for k, v in trainer.evaluate().items()})
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if losses:  # a resume at the last step trains (and logs) nothing new
            metrics["train_loss_first"], metrics["train_loss_last"] = losses[0], losses[-1]
        gathered = output_dir / "final_model"
        if sharded and cfg.logger.log_model:
            # No rank holds the whole model: all ranks gather it into one ordinary checkpoint
            # (FSDP FULL_STATE_DICT, ZeRO-3 16-bit weights), which rank 0 reads back to log.
            trainer.save_model(str(gathered))
        if not is_main:
            return metrics

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
        if cfg.logger.log_model:
            final = _read_back(gathered, cfg) if sharded else trainer.model
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
        "resumed_from": str(resume_from) if resume_from else None,
        "metrics": metrics,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_summary(summary)
    return metrics


def _read_back(gathered: Path, cfg: DictConfig):
    """The model `trainer.save_model` gathered from the shards, loaded whole on rank 0."""
    dtype = model.resolve_dtype(cfg.model.dtype)
    if cfg.peft.method == "none":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(gathered, dtype=dtype)
    from peft import AutoPeftModelForCausalLM  # the adapter names its base model

    return AutoPeftModelForCausalLM.from_pretrained(gathered, dtype=dtype)


def _weights_sharded(trainer: SFTTrainer) -> bool:
    """FSDP or DeepSpeed ZeRO-3: no single rank holds the whole model."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def print_summary(summary: dict) -> None:
    m = summary["metrics"]
    lines = [
        "",
        "Fine-tune finished.",
        f"  run dir        {summary['run_dir']}",
    ]
    if "train_loss_first" in m:
        lines.append(f"  train loss     {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}")
    lines.append(f"  eval loss      {m.get('eval_loss', float('nan')):.3f}")
    if summary.get("resumed_from"):
        lines.append(f"  resumed from   {summary['resumed_from']}")
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
