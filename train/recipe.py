"""The training recipe: one TRL trainer run (SFTTrainer, or DPOTrainer / KTOTrainer with
`method=dpo|kto`, see train/preference.py), tracked and registered in MLflow.

`run(cfg)` is a list of stages, each a small function below, read top to bottom:

1. `set_up`: checks that need no download, seed, run folder, resume point, tokenizer, data
   (prepared once per node), model and the method's trainer; on every rank.
2. `track`: rank 0 opens the MLflow run (continuing this run folder's run on a resume; a child of
   the sweep's parent run in a sweep) and logs tags, params, the resolved config, the chat
   template and the data's stats; on a signal it marks the run KILLED.
3. `answer_held_out`: greedy answers to held-out prompts, exact match (rank 0; before and after);
   with preference data also the held-out reward accuracy and margin against the starting model.
4. `train`: `trainer.train`, `trainer.evaluate`, and with sharded weights the gathered save;
   every rank, in step. The other ranks run only this stage and return its metrics.
5. `log_results`, `log_and_register`: metrics, answers and loss curve; the model as an MLflow
   `llm/v1/chat` model, registered and tagged (rank 0).
6. `summarize`: summary.json and the printed summary (rank 0).

Features and the keys that control them:
- model: hub id or local directory (`model.name_or_path`), a GGUF file (`model.gguf_file`, converted
  once), attention (`model.attn_implementation`: auto = one attention per packed conversation on
  CUDA, sdpa on a CPU), dtype, a dedicated pad token.
- data: ultrachat-style `messages` from local files or the hub (`data=...`), rendered as given by
  `common.rendering`, the renderer the servers use (a template's default system prompt included).
- objective: `method=sft|dpo|kto` and `dpo.<field>` / `kto.<field>` (TRL's DPOConfig/KTOConfig);
  the shared training arguments stay `sft.<field>`; preference rows in train/prepare/preference.py.
  `model.uri=models:/NAME@champion` starts from a registered model.
- adapters: `peft=none|lora|qlora|dora` and `peft.<field>`; QLoRA refuses to start
  without CUDA before loading anything; `logger.peft_save=merged|adapter`.
- training: every TRL `SFTConfig` field as `sft.<field>` (packing, assistant_only_loss,
  activation_checkpointing, bf16, eval_strategy, ...).
- tracking: params (bounded for Azure ML), metrics, resolved config, chat template,
  loss curve, held-out answers (`eval.generate_samples`), and the model as an MLflow
  `llm/v1/chat` model, registered under `logger.registered_model_name` and tagged with git
  sha, overrides, data hash and eval metrics. Only rank 0 talks to MLflow (`train.sweep`
  for sweeps).
- scale-out: unchanged under `torchrun` / `accelerate launch` (DDP, FSDP, DeepSpeed through
  `conf/accelerate/`); every rank uses the same run folder (`train.launch`). With FSDP or
  ZeRO-3 no rank holds the whole model: held-out answers are skipped and the logged model is
  the one all ranks gather into `<run dir>/final_model`.
- checkpoints: `sft.save_steps`/`save_total_limit`, `resume=auto|none|PATH`, and a checkpoint
  plus exit status 75 on SIGTERM/SIGINT (`train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from datasets import DatasetDict
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase, Trainer, set_seed
from trl import SFTTrainer

from common import mlflow_tables
from train import (
    checkpoint,
    data,
    evaluate,
    gguf_model,
    launch,
    lengths,
    model,
    preference,
    start_model,
    sweep,
    tracking,
)
from train.config import Objective, PeftMethod, PeftSave, sft_schema
from train.mixture import answered_held_out
from train.prepare import preview
from train.sft import sft_args, steps_for_token_budget

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune `cfg.model` on `cfg.data`; return the final metrics (on every rank)."""
    setup = set_up(cfg)
    if not setup.trainer.is_world_process_zero():
        return train(cfg, setup)  # the collectives of training, evaluation and the sharded save
    with track(cfg, setup) as mlflow_run:
        before, answers_before = answer_held_out(cfg, setup, "before")
        asked_before = ask_tasks(cfg, setup, "before")
        trained = train(cfg, setup)
        after, answers = answer_held_out(cfg, setup, "after")
        asked_after = ask_tasks(cfg, setup, "after")
        metrics = before | trained | after | evaluate.task_metrics(asked_before, asked_after)
        log_results(
            setup, metrics, {"answers_before": answers_before, "answers": answers}, asked_before | asked_after
        )
        version = log_and_register(cfg, setup, metrics, mlflow_run.info.run_id)
    return summarize(setup, metrics, mlflow_run.info.run_id, version, held_out_rows=len(answers))


@dataclass
class Setup:
    """What the stages share, built by `set_up` on every rank."""

    trainer: Trainer  # SFTTrainer, DPOTrainer or KTOTrainer
    tokenizer: PreTrainedTokenizerBase
    splits: DatasetDict
    prepared: data.PreparedData
    output_dir: Path
    resume_from: Path | None
    stop_on_signal: checkpoint.StopOnSignal
    sharded: bool  # FSDP or ZeRO-3: no rank holds the whole model
    length: lengths.TrainingLength  # the trainer's max_length and where it comes from

    @property
    def gathered_dir(self) -> Path:
        return self.output_dir / "final_model"


def set_up(cfg: DictConfig) -> Setup:
    """Everything before the first step; what can fail without a download fails first."""
    model.check_peft_hardware(cfg.peft)  # before anything is written or loaded
    data.refuse_demo_model_on_own_data(cfg)
    tracking.check_run_limits(cfg, sft_defaults(), _recipe_tags(cfg))  # before anything is logged
    gguf_model.resolve_gguf(cfg.model)  # model.gguf_file: converted once into a model directory
    set_seed(cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sft = cfg.method == Objective.sft
    args = sft_args(cfg) if sft else preference.preference_args(cfg)
    launch.check_processes(args.world_size)
    resume_from = checkpoint.find_resume_checkpoint(cfg.resume, Path(args.output_dir))
    start_model.resolve_model_uri(
        cfg
    )  # model.uri=models:/NAME@champion: downloaded once, loaded as a directory
    tokenizer = model.load_tokenizer(cfg.model)
    with args.main_process_first(desc="preparing data"):  # one rank per node writes the files
        splits, prepared = data.load_splits(cfg, tokenizer)
    length = lengths.set_training_length(args, cfg, prepared.stats)  # sft.max_length=null: from the data
    if cfg.preview and sft:
        print(preview.render(cfg, tokenizer, prepared, cfg.preview))
    if cfg.token_budget and sft and args.max_steps > 0:  # the command line's sft.max_steps=N wins
        log.info("sft.max_steps=%d: token_budget %d not used", args.max_steps, cfg.token_budget)
    elif cfg.token_budget and sft:  # preference rows count their tokens differently
        args.max_steps = steps_for_token_budget(args, cfg.token_budget, prepared.stats)
        log.info("token_budget %d: %d optimizer steps", cfg.token_budget, args.max_steps)
    build = (
        dict(train_dataset=splits["train"], eval_dataset=_eval_sets(splits))
        if sft
        else dict(cfg=cfg, splits=splits)
    )
    trainer = (SFTTrainer if sft else preference.make_trainer)(
        model=model.load_model(cfg.model, cfg.peft, tokenizer),
        args=args,
        processing_class=tokenizer,
        peft_config=model.lora_config(cfg.peft),
        callbacks=[tracking.MetricsOnlyMLflowCallback(), checkpoint.ResumeGuard(resume_from)],
        **build,
    )
    launch.check_sharding(trainer)  # FSDP/DeepSpeed asked for but not active: stop, train nothing else
    trainer.add_callback(launch.sharded_model_check()(trainer))  # and FSDP2 that did not shard: stop
    stop_on_signal = checkpoint.StopOnSignal(trainer.accelerator)
    trainer.add_callback(stop_on_signal)
    return Setup(
        trainer,
        tokenizer,
        splits,
        prepared,
        output_dir,
        resume_from,
        stop_on_signal,
        _weights_sharded(trainer),
        length,
    )


@contextlib.contextmanager
def track(cfg: DictConfig, setup: Setup) -> Iterator[mlflow.ActiveRun]:
    """Rank 0's MLflow run around the stages after set-up, with the run's settings logged.

    Stopped by a signal, the run is tagged with the step and marked KILLED; the rerun that
    resumes from the checkpoint continues it.
    """
    mlflow_run, continued = _mlflow_run(cfg, setup.output_dir, setup.resume_from)
    with mlflow_run:
        _log_settings(cfg, setup, continued)
        try:
            yield mlflow_run
        except checkpoint.TrainingInterrupted as stop:
            saved = checkpoint.saved_at(Path(setup.trainer.args.output_dir), stop.step)
            log.warning(
                "stopped at step %d; checkpoint %s; rerun the same command to resume", stop.step, saved
            )
            mlflow.set_tag("interrupted_at_step", str(stop.step))
            mlflow.end_run(status="KILLED")
            raise


def answer_held_out(cfg: DictConfig, setup: Setup, when: str) -> tuple[dict[str, float], list[dict]]:
    """Exact match of greedy answers to the first `eval.generate_samples` held-out prompts, the
    share of them that end on a stop token (stop_rate), and the answers. Rank 0 alone generates,
    so with sharded weights (which would need every rank) this is skipped."""
    rewards = {}
    if cfg.method != Objective.sft and when == "before":  # the starting model is the reference
        rewards = preference.reward_metrics(setup.trainer.evaluate(metric_key_prefix="eval"), "before")
    n = 0 if setup.sharded else cfg.eval.generate_samples
    if not n:
        return rewards, []
    held_out = answered_held_out(setup.splits)  # not the rehearsal's rows: the base model's own answers
    conversations = [m for m in held_out["messages"] if m]  # KTO: the good completions' prompts
    log.info("answering %d held-out prompts %s training", min(n, len(conversations)), when)
    scores, answers = evaluate.exact_match_eval(
        setup.trainer.model,
        setup.tokenizer,
        conversations,
        n,
        cfg.eval.max_new_tokens,
        cfg.eval.torch_threads,
    )
    rows = scores.pop("held_out_rows", 0)
    scored = {f"{name}_{when}": value for name, value in scores.items()}
    return rewards | scored | {"held_out_rows": rows}, answers


def ask_tasks(cfg: DictConfig, setup: Setup, when: str) -> dict[str, list[dict]]:
    """The answers to each generation task of `eval.tasks` (the regression set), keyed
    `<task>_<when>`; rank 0 alone, skipped with sharded weights as `answer_held_out` is."""
    if setup.sharded or not cfg.eval.tasks:
        return {}
    log.info("asking %d generation task(s) %s training", len(cfg.eval.tasks), when)
    return {
        f"{name}_{when}": rows
        for name, rows in evaluate.ask_tasks(setup.trainer.model, setup.tokenizer, cfg.eval.tasks).items()
    }


def train(cfg: DictConfig, setup: Setup) -> dict[str, float]:
    """Train (from the resume checkpoint, if any) and evaluate the loss; every rank, in step.

    A signal ends training with a checkpoint and raises `TrainingInterrupted` (exit status 75).
    """
    trainer = setup.trainer
    trainer.accelerator.wait_for_everyone()  # rank 0 may still be answering held-out prompts
    log.info("training")
    started, cpu_started = time.perf_counter(), time.process_time()
    result = trainer.train(resume_from_checkpoint=str(setup.resume_from) if setup.resume_from else None)
    if setup.stop_on_signal.interrupted:
        raise checkpoint.TrainingInterrupted(trainer.state.global_step)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    metrics["train_wall_seconds"] = time.perf_counter() - started
    # CPU seconds of this process (all its threads): on a shared machine, what the run cost
    metrics["train_cpu_seconds"] = time.process_time() - cpu_started
    evaluated = _per_source_eval_loss({k: float(v) for k, v in trainer.evaluate().items()}, setup.splits)
    metrics |= evaluated | preference.reward_metrics(evaluated, "after")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:  # a resume at the last step trains (and logs) nothing new
        metrics["train_loss_first"], metrics["train_loss_last"] = losses[0], losses[-1]
    if setup.sharded and cfg.logger.log_model:
        # No rank holds the whole model: all ranks gather it into one ordinary checkpoint
        # (FSDP FULL_STATE_DICT, ZeRO-3 16-bit weights), which rank 0 reads back to log.
        trainer.save_model(str(setup.gathered_dir))
    return metrics


def log_results(
    setup: Setup, metrics: dict[str, float], answers: dict[str, list[dict]], asked: dict[str, list[dict]]
) -> None:
    """The final metrics, the held-out answers before and after training (eval/answers_before.json,
    eval/answers.json) and the tasks' answers as tables, the loss curve."""
    for name, rows in answers.items():
        if rows:  # mlflow.log_table fails on Azure ML's tracking server: see mlflow_tables
            columns = ("prompt", "reference", "answer", "finish_reason")
            mlflow_tables.log_table({k: [a[k] for a in rows] for k in columns}, f"eval/{name}.json")
    for name, rows in asked.items():
        mlflow_tables.log_table(rows, f"eval/{name}.json")
    mlflow.log_metrics(metrics)
    curve = tracking.log_loss_curve(setup.trainer.state.log_history, setup.output_dir / "loss_curve.png")
    mlflow.log_artifact(str(curve))


def log_and_register(cfg: DictConfig, setup: Setup, metrics: dict[str, float], run_id: str):
    """The trained model as an MLflow `llm/v1/chat` model, registered and tagged; the registered
    ModelVersion, or None when `logger.log_model` is off or registration is."""
    if not cfg.logger.log_model:
        return None
    final = _read_back(setup.gathered_dir, cfg) if setup.sharded else setup.trainer.model
    with_peft = cfg.peft.method != PeftMethod.none
    if with_peft and cfg.logger.peft_save == PeftSave.merged:
        final = final.merge_and_unload()
    final.config.use_cache = True  # gradient checkpointing turned it off
    tags = {
        "git_sha": tracking.git_sha(Path(cfg.paths.root_dir)),
        "hydra_overrides": _overrides(),
        "data_hash": data.data_fingerprint(setup.splits),
        "mlflow_run_id": run_id,
        "method": str(cfg.method),
        **({"started_from": cfg.model.uri} if cfg.model.uri else {}),
        **{
            k: f"{v:.6g}"
            for k, v in metrics.items()
            if k.startswith(("eval_", "exact_match", "reward_")) and "/" not in k
        },
    }
    log.info("logging the model to MLflow as an llm/v1/chat model")
    adapter_only = with_peft and cfg.logger.peft_save == PeftSave.adapter
    logger_cfg = cfg.logger
    if _in_sweep() and not logger_cfg.register_sweep_points:  # points do not pile versions on a name
        logger_cfg = OmegaConf.merge(logger_cfg, {"registered_model_name": None})
    return tracking.log_chat_model(final, setup.tokenizer, logger_cfg, adapter_only, tags)


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def summarize(
    setup: Setup, metrics: dict[str, float], run_id: str, version, held_out_rows: int = 0
) -> dict[str, float]:
    """summary.json in the run folder and the printed summary; returns the metrics."""
    summary = {
        "held_out_rows": held_out_rows,  # the answers exact match and stop rate are measured on
        "held_out_total": len(answered_held_out(setup.splits)),
        "run_dir": str(setup.output_dir),
        "mlflow_run_id": run_id,
        "tracking_uri": mlflow.get_tracking_uri(),
        "registered_model": f"{version.name}/{version.version}" if version else None,
        "resumed_from": str(setup.resume_from) if setup.resume_from else None,
        "max_length": setup.length.describe(),
        "metrics": metrics,
        "process_cpu_seconds": time.process_time(),  # the whole run so far (all threads)
    }
    (setup.output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print_summary(summary)
    return metrics


def sft_defaults() -> dict:
    """TRL's defaults for every sft key (to log only what a config changes)."""
    return OmegaConf.to_container(OmegaConf.structured(sft_schema()), enum_to_str=True)


def _recipe_tags(cfg: DictConfig) -> dict[str, str]:
    """The run's own tags (besides world_size), checked against Azure ML's limits in `set_up`."""
    return {"profile": str(cfg.get("profile")), "hydra.overrides": _overrides(), "run_id": cfg.run_id}


def _overrides() -> str:
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


def _log_settings(cfg: DictConfig, setup: Setup, continued: bool) -> None:
    """Tags, params (once per MLflow run), the resolved config, the chat template, the data's stats."""
    mlflow.set_tags(
        {
            **_recipe_tags(cfg),
            "world_size": str(setup.trainer.args.world_size),
            "max_length": setup.length.describe(),  # sft.max_length=null: the value taken from the data
            **cfg.logger.tags,
        }
    )
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    if setup.resume_from is not None:
        mlflow.set_tag("resumed_from", str(setup.resume_from))
    if continued:  # params are logged once; a resume may change e.g. max_steps
        mlflow.log_text(resolved, f"config/resolved_resume_{setup.resume_from.name}.yaml")
    else:
        mlflow.log_params(tracking.flatten_params(cfg, sft_defaults()))
        mlflow.log_text(resolved, "config/resolved.yaml")
    rendered = tracking.rendered_rows(setup.prepared.dir)
    tracking.log_tokenizer_artifacts(setup.tokenizer, setup.output_dir / "tokenizer_info", rendered)
    tracking.log_prepared_data(setup.prepared)


def _read_back(gathered: Path, cfg: DictConfig):
    """The model `trainer.save_model` gathered from the shards, loaded whole on rank 0."""
    dtype = model.resolve_dtype(cfg.model.dtype)
    if cfg.peft.method == PeftMethod.none:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(gathered, dtype=dtype)
    from peft import AutoPeftModelForCausalLM  # the adapter names its base model

    return AutoPeftModelForCausalLM.from_pretrained(gathered, dtype=dtype)


def _eval_sets(splits: DatasetDict):
    """The held-out rows: one set, or with a mixture one per source (eval_<name>_loss each)."""
    per_source = {k.split(":", 1)[1]: v for k, v in splits.items() if k.startswith("test:")}
    return per_source or splits["test"]


def _per_source_eval_loss(evaluated: dict[str, float], splits: DatasetDict) -> dict[str, float]:
    """With a mixture, `eval_loss` is the sources' eval losses weighted by their held-out rows."""
    rows = {k.split(":", 1)[1]: len(v) for k, v in splits.items() if k.startswith("test:")}
    losses = {name: evaluated.get(f"eval_{name}_loss") for name in rows}
    if rows and "eval_loss" not in evaluated and all(v is not None for v in losses.values()):
        evaluated["eval_loss"] = sum(losses[n] * rows[n] for n in rows) / sum(rows.values())
    return evaluated


def _weights_sharded(trainer: Trainer) -> bool:
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
        f"  max_length     {summary.get('max_length')}",
    ]
    if "train_loss_first" in m:
        lines.append(f"  train loss     {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}")
    lines.append(f"  eval loss      {m.get('eval_loss', float('nan')):.3f}")
    for name, label in (("reward_accuracy", "reward accuracy"), ("reward_margin", "reward margin")):
        if f"{name}_after" in m:
            lines.append(
                f"  held-out {label:<16} {m.get(f'{name}_before', float('nan')):.3f} before -> "
                f"{m[f'{name}_after']:.3f} after (against the starting model)"
            )
    if summary.get("resumed_from"):
        lines.append(f"  resumed from   {summary['resumed_from']}")
    if "exact_match_after" in m:
        rows, total = summary.get("held_out_rows"), summary.get("held_out_total")
        lines.append(
            f"  held-out exact match  {m['exact_match_before']:.0%} before -> {m['exact_match_after']:.0%} after"
            f" (on {rows} of {total} held-out rows: eval.generate_samples; action=evaluate answers all)"
        )
        lines.append(
            f"  answers that stop     {m['stop_rate_before']:.0%} before -> {m['stop_rate_after']:.0%} after"
            " (end on a stop token, not at eval.max_new_tokens)"
        )
    for task in sorted(k.removesuffix("_kept") for k in m if k.endswith("_kept")):
        lines.append(
            f"  {task}  {m[f'{task}_contains_before']:.0%} before -> {m[f'{task}_contains_after']:.0%} after; "
            f"{m[f'{task}_kept']:.0%} of the right answers kept ({m[f'{task}_questions']:.0f} questions)"
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
        lines.append(
            f"  next           python -m deploy action=promote model.name={name} model.version={version}"
            f"  (the gate; then: make serve MODEL={name})"
        )
    print("\n".join(lines))
