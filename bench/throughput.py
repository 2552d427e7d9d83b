"""Training throughput of a config, its knobs one by one, and the seed recipe, in one process.

Each variant is the composed config plus a knob's overrides (conf/bench.yaml `bench.knobs`),
trained with the same TRL `SFTTrainer` the recipe uses for `bench.untimed_steps` +
`bench.steps` optimizer steps on the same data. Per variant it records real (non-padding)
tokens/s over the timed steps, step times, MFU (bench/metrics.py) and peak memory.

Models: `bench.weights=pretrained` loads `model.name_or_path` as training does (the tiny
model on a CPU); `bench.weights=random` builds train/architectures/<short_name>.json with
random weights (Phi-3-mini, Phi-3.5-mini: throughput needs no trained weights), on the GPU
directly. `bench.dry_run=true` builds it on the meta device and prints the plan instead.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
from trl import SFTTrainer

from bench import metrics
from bench.config import KnobConfig
from bench.report import markdown_table, write_results
from train import data as train_data
from train import model as train_model
from train.estimate import ARCHITECTURES_DIR
from train.sft import sft_args
from train.tiny_model import ensure_tiny_phi3

log = logging.getLogger(__name__)

BASELINE_KNOB = "seed_recipe"


_MISSING = object()


class BenchError(ValueError):
    """A benchmark setting that cannot work; the message names the key and what to do."""


# --- variants -----------------------------------------------------------------------


def apply_overrides(cfg: DictConfig, overrides: list[str], where: str) -> DictConfig:
    """A copy of `cfg` with `key=value` overrides; unknown keys fail naming the knob."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise BenchError(f"{where}: {item!r} is not key=value with a key of the composed config")
    # from_dotlist parses values as YAML (true, 4, null); merging checks them against the schema.
    return OmegaConf.merge(copy.deepcopy(cfg), OmegaConf.from_dotlist(list(overrides)))


def missing_needs(needs: list[str], on_cuda: bool) -> str | None:
    for need in needs:
        if need == "cuda":
            if not on_cuda:
                return "needs a CUDA GPU"
        elif importlib.util.find_spec(need) is None:
            return f"{need} not installed"
    return None


def plan_variants(cfg: DictConfig, on_cuda: bool) -> list[dict]:
    """The configured recipe, the seed recipe, then each ablation: name, config, skip reason."""
    knobs = cfg.bench.knobs
    names = ([BASELINE_KNOB] if cfg.bench.baseline else []) + list(cfg.bench.ablations)
    unknown = [n for n in names if n not in knobs]
    if unknown:
        raise BenchError(f"bench.ablations: unknown knob(s) {unknown}; known: {sorted(knobs)}")
    plan = [{"name": "recipe", "about": "the configured recipe", "overrides": [], "cfg": cfg, "skip": None}]
    for name in names:
        try:
            knob = OmegaConf.merge(OmegaConf.structured(KnobConfig), knobs[name])
        except Exception as exc:
            raise BenchError(f"bench.knobs.{name}: {exc}; keys are overrides, needs, about") from None
        overrides = list(knob.overrides)
        plan.append(
            {
                "name": "seed recipe" if name == BASELINE_KNOB else f"+{name}",
                "about": knob.about,
                "overrides": overrides,
                "cfg": apply_overrides(cfg, overrides, f"bench.knobs.{name}.overrides"),
                "skip": missing_needs(list(knob.needs), on_cuda),
            }
        )
    return plan


# --- model and data -----------------------------------------------------------------


def architecture_file(short_name: str) -> Path:
    path = ARCHITECTURES_DIR / f"{short_name}.json"
    if not path.exists():
        known = sorted(p.stem for p in ARCHITECTURES_DIR.glob("*.json"))
        raise BenchError(
            f"bench.weights=random: no architecture for model.short_name={short_name!r} in "
            f"{ARCHITECTURES_DIR} (known: {known}); pick one of those models or add its config.json there"
        )
    return path


def load_tokenizer(cfg: DictConfig):
    """The model's tokenizer; random-weight architectures borrow the tiny model's (ids only)."""
    if cfg.bench.weights == "random":
        # Synthetic data are token ids already: the tokenizer only supplies pad and eos.
        return AutoTokenizer.from_pretrained(ensure_tiny_phi3(cfg.paths.cache_dir))
    return train_model.load_tokenizer(cfg.model)


def build_model(cfg: DictConfig, tokenizer, device: str):
    if cfg.bench.weights == "pretrained":
        return train_model.load_model(cfg.model, cfg.peft, tokenizer)
    if train_model.quantization_config(cfg.peft) is not None:
        raise BenchError(
            "bench.weights=random cannot quantise on the fly: use peft=lora, or bench.weights=pretrained "
            "with model.name_or_path pointing at a saved checkpoint"
        )
    config = AutoConfig.from_pretrained(architecture_file(cfg.model.short_name))
    with torch.device(device):  # built where it trains: no 15 GB detour through host memory
        model = AutoModelForCausalLM.from_config(
            config,
            attn_implementation=train_model.resolve_attn_implementation(cfg.model.attn_implementation),
            dtype=train_model.resolve_dtype(cfg.model.dtype),
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def synthetic_dataset(cfg: DictConfig, vocab_size: int, tokenizer, rows_needed: int) -> Dataset:
    """Pre-tokenized random conversations with log-normal lengths (ultrachat-like spread)."""
    max_length = cfg.sft.max_length
    mean = cfg.bench.synthetic_mean_tokens or max_length // 2
    sigma = cfg.bench.synthetic_length_sigma
    rng = np.random.default_rng(cfg.seed)
    lengths = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, rows_needed)
    lengths = np.clip(lengths.astype(int), 8, max_length)
    reserved = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    low = max(reserved) + 1  # never a pad (it would not count as a real token) or an eos
    return Dataset.from_dict({"input_ids": [rng.integers(low, vocab_size, n).tolist() for n in lengths]})


def bench_dataset(cfg: DictConfig, tokenizer, vocab_size: int, scratch: Path) -> Dataset:
    if cfg.bench.data == "recipe":
        if cfg.bench.weights == "random":
            raise BenchError(
                "bench.weights=random has no tokenizer for real text: use bench.data=synthetic "
                "(or bench.weights=pretrained)"
            )
        # Prepared (validated, tokenized, length policy applied) exactly as training does.
        splits, _ = train_data.load_splits(cfg, tokenizer)
        return splits["train"]
    if cfg.bench.data != "synthetic":
        raise BenchError(f"bench.data={cfg.bench.data!r}: use recipe or synthetic")
    # Enough rows for every step of the largest batch of any variant, with room for packing.
    b = cfg.bench
    rows_per_step = max(64, cfg.sft.per_device_train_batch_size) * max(1, cfg.sft.gradient_accumulation_steps)
    rows = (b.untimed_steps + b.steps + 2) * rows_per_step * 4
    return synthetic_dataset(cfg, vocab_size, tokenizer, rows)


# --- timing -------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Wall time and non-padding tokens seen at the end of every optimizer step."""

    def __init__(self, on_cuda: bool):
        self.on_cuda = on_cuda
        self.marks: list[tuple[int, float, int]] = []

    def _mark(self, state):
        if self.on_cuda:
            torch.cuda.synchronize()
        self.marks.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen))

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._mark(state)


class SelectiveCheckpointing(TrainerCallback):
    """Keep activation checkpointing on every n-th decoder layer only.

    Trainer enables checkpointing on every layer before `on_train_begin`; transformers'
    GradientCheckpointingLayer reads its own `gradient_checkpointing` flag per call.
    """

    def __init__(self, every_n: int):
        self.every_n = every_n

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        for i, layer in enumerate(layers):
            layer.gradient_checkpointing = layer.gradient_checkpointing and i % self.every_n == 0
        log.info(
            "checkpointing %d of %d layers",
            sum(layer.gradient_checkpointing for layer in layers),
            len(layers),
        )


def bench_sft_config(cfg: DictConfig, scratch: Path) -> DictConfig:
    """The variant's sft keys plus what a measurement needs: fixed steps, no eval/saving."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(scratch)
        cfg.sft.max_steps = cfg.bench.untimed_steps + cfg.bench.steps
        cfg.sft.eval_strategy = "no"
        cfg.sft.save_strategy = "no"
        cfg.sft.load_best_model_at_end = False
        cfg.sft.logging_strategy = "no"
        cfg.sft.include_num_input_tokens_seen = "non_padding"
        cfg.sft.disable_tqdm = True
        if cfg.bench.data == "synthetic":
            cfg.sft.assistant_only_loss = False  # no chat template on random ids
    return cfg


def run_variant(cfg: DictConfig, dataset: Dataset, tokenizer, scratch: Path, on_cuda: bool) -> dict:
    metrics.reset_peak_memory()
    set_seed(cfg.seed)
    cfg = bench_sft_config(cfg, scratch)
    model = build_model(cfg, tokenizer, "cuda" if on_cuda else "cpu")
    attn = model.config._attn_implementation
    timer = StepTimer(on_cuda)
    callbacks = [timer]
    if cfg.sft.gradient_checkpointing and cfg.bench.checkpoint_every_n_layers > 1:
        callbacks.append(SelectiveCheckpointing(cfg.bench.checkpoint_every_n_layers))
    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=train_model.lora_config(cfg.peft),
        callbacks=callbacks,
    )
    params = metrics.count_parameters(trainer.model)
    trainer.train()
    memory = metrics.peak_memory_gib(on_cuda)

    timed = [m for m in timer.marks if m[0] >= cfg.bench.untimed_steps]
    if len(timed) < 2:
        raise BenchError(f"only {len(timer.marks)} steps ran; raise bench.steps or check the data size")
    step_times = [b[1] - a[1] for a, b in zip(timed, timed[1:])]
    tokens = timed[-1][2] - timed[0][2]
    seconds = timed[-1][1] - timed[0][1]
    text_config = model.config.get_text_config()
    flops = metrics.train_flops_per_token(
        params, text_config.num_hidden_layers, text_config.hidden_size, cfg.sft.max_length
    )
    result = {
        "attn_implementation": attn,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "per_device_batch": cfg.sft.per_device_train_batch_size,
        "grad_accum": cfg.sft.gradient_accumulation_steps,
        "max_length": cfg.sft.max_length,
        "packing": f"{cfg.sft.packing_strategy}" if cfg.sft.packing else "padded",
        "padding_free": bool(trainer.padding_free),
        "gradient_checkpointing": bool(cfg.sft.gradient_checkpointing),
        "optim": str(cfg.sft.optim),
        "torch_compile": bool(cfg.sft.torch_compile),
        "params": params,
        "flops_per_token": flops,
        "timed_steps": len(step_times),
        "tokens_timed": tokens,
        "tokens_per_step": tokens / len(step_times),
        "tokens_per_s": tokens / seconds,
        "step_times_s": step_times,
        **memory,
    }
    del trainer, model
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return result


# --- the benchmark ------------------------------------------------------------------


def dry_run(plan: list[dict]) -> dict:
    """Params and FLOPs per token of each variant's model, built on the meta device."""
    rows = []
    for item in plan:
        vcfg = item["cfg"]
        path = (
            architecture_file(vcfg.model.short_name)
            if vcfg.bench.weights == "random"
            else vcfg.model.name_or_path
        )
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        if train_model.lora_config(vcfg.peft) is not None:
            from peft import get_peft_model

            model = get_peft_model(model, train_model.lora_config(vcfg.peft))
        params = metrics.count_parameters(model)
        flops = metrics.train_flops_per_token(
            params, config.num_hidden_layers, config.hidden_size, vcfg.sft.max_length
        )
        rows.append(
            {
                **_row_head(item),
                "params": params,
                "flops_per_token": flops,
                "status": item["skip"] or "would run",
            }
        )
    return {"dry_run": True, "variants": rows}


def _row_head(item: dict) -> dict:
    return {"name": item["name"], "about": item["about"], "overrides": item["overrides"]}


def run_benchmark(cfg: DictConfig) -> dict:
    """Run every planned variant; write results JSON + markdown; return the results."""
    on_cuda = torch.cuda.is_available() and not cfg.sft.get("use_cpu", False)
    train_model.check_peft_hardware(cfg.peft)
    plan = plan_variants(cfg, on_cuda)
    if cfg.bench.steps < 2 or cfg.bench.repeats < 1:
        raise BenchError("bench.steps: time at least 2 steps; bench.repeats: at least 1")
    if cfg.bench.dry_run:
        results = dry_run(plan)
        print(
            markdown_table(
                [
                    ("variant", "name", ""),
                    ("FLOPs/token", "flops_per_token", ".4g"),
                    ("status", "status", ""),
                ],
                results["variants"],
            )
        )
        return results

    scratch = Path(cfg.paths.output_dir)
    tokenizer = load_tokenizer(cfg)
    vocab = AutoConfig.from_pretrained(
        architecture_file(cfg.model.short_name) if cfg.bench.weights == "random" else cfg.model.name_or_path
    ).vocab_size
    dataset = bench_dataset(cfg, tokenizer, vocab, scratch)
    hardware = metrics.describe_hardware(on_cuda)
    peak = metrics.peak_tflops(hardware.get("gpu"), cfg.bench.peak_tflops)

    # Round-robin repeats: slow drift of a shared machine hits every variant alike, and
    # the spread between a variant's own repeats says which differences are noise.
    runs: list[list[dict]] = [[] for _ in plan]
    failures: dict[int, str] = {}
    for repeat in range(cfg.bench.repeats):
        for i, item in enumerate(plan):
            if item["skip"] or i in failures:
                continue
            log.info("%s (repeat %d/%d)", item["name"], repeat + 1, cfg.bench.repeats)
            try:
                runs[i].append(run_variant(item["cfg"], dataset, tokenizer, scratch / f"v{i}", on_cuda))
            except Exception as exc:  # an OOM or a knob that breaks is a result too
                if i == 0:
                    raise  # without the recipe's own number nothing compares
                log.exception("%s failed", item["name"])
                failures[i] = f"{type(exc).__name__}: {str(exc)[:300]}"
            if i in failures:  # out of the except block, an OOM's frames no longer hold the model
                gc.collect()
                if on_cuda:
                    torch.cuda.empty_cache()
    rows = []
    for i, item in enumerate(plan):
        row = _row_head(item)
        if item["skip"]:
            row.update(status="skipped", reason=item["skip"])
        elif i in failures:
            row.update(status="failed", reason=failures[i])
        else:
            row.update(status="ok", **summarise(runs[i]))
            row["mfu"] = metrics.mfu(row["tokens_per_s"], row["flops_per_token"], peak)
        rows.append(row)

    hardware["load_avg_1m_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    _add_ratios(rows)
    results = {
        "kind": "train",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench.train", *_overrides()]),
        "hardware": hardware,
        "peak_bf16_tflops": peak,
        "versions": metrics.library_versions(),
        "model": cfg.model.short_name,
        "weights": cfg.bench.weights,
        "peft": cfg.peft.method,
        "data": cfg.data.name if cfg.bench.data == "recipe" else "synthetic",
        "profile": cfg.get("profile"),
        "untimed_steps": cfg.bench.untimed_steps,
        "timed_steps": cfg.bench.steps,
        "repeats": cfg.bench.repeats,
        "variants": rows,
    }
    markdown = results_markdown(results)
    path = write_results(results, markdown, cfg.bench.results_dir, metrics.hardware_slug(hardware))
    results["json_path"], results["markdown_path"] = str(path), str(path.with_suffix(".md"))
    print(markdown)
    print(f"\nresults: {path}\n         {path.with_suffix('.md')}")
    return results


def summarise(runs: list[dict]) -> dict:
    """One variant over its repeats: median tokens/s and its spread, all step times, max memory."""
    speeds = [r["tokens_per_s"] for r in runs]
    steps = [t for r in runs for t in r["step_times_s"]]
    summary = {k: v for k, v in runs[-1].items() if k not in ("tokens_per_s", "step_times_s")}
    summary.update(
        tokens_per_s=statistics.median(speeds),
        tokens_per_s_runs=speeds,
        spread=(max(speeds) - min(speeds)) / statistics.median(speeds),
        step_time_s_median=statistics.median(steps),
        step_time_s_mean=statistics.fmean(steps),
    )
    for key in ("peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            summary[key] = max(values)
    return summary


def _overrides() -> list[str]:
    """The command line's overrides (Hydra's record of them; also set for composed configs)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]


def _add_ratios(rows: list[dict]) -> None:
    def speed(name):
        return next((r.get("tokens_per_s") for r in rows if r["name"] == name), None)

    recipe, seed = speed("recipe"), speed("seed recipe")
    for row in rows:
        tps = row.get("tokens_per_s")
        if tps:
            row["x_recipe"] = tps / recipe if recipe else None
            row["x_seed"] = tps / seed if seed else None


TABLE_COLUMNS = [
    ("variant", "name", ""),
    ("tokens/s", "tokens_per_s", ",.0f"),
    ("x seed", "x_seed", ".2f"),
    ("x recipe", "x_recipe", ".2f"),
    ("spread", "spread", ".0%"),
    ("step s (median)", "step_time_s_median", ".3f"),
    ("tokens/step", "tokens_per_step", ",.0f"),
    ("MFU", "mfu", ".1%"),
    ("peak mem GiB", "peak_memory", ".2f"),
    ("attention", "attn_implementation", ""),
    ("batching", "packing", ""),
    ("status", "status", ""),
    ("what", "about", ""),
]


def results_markdown(results: dict) -> str:
    hw = results["hardware"]
    device = hw.get("gpu") or f"{hw['cpu']} ({hw['cpu_cores']} cores)"
    rows = []
    for row in results["variants"]:
        rows.append(
            {
                **row,
                "peak_memory": row.get("peak_allocated_gib", row.get("peak_rss_gib")),
                "status": row["status"] if row["status"] == "ok" else f"{row['status']}: {row.get('reason')}",
            }
        )
    v = results["versions"]
    memory_kind = "torch.cuda.max_memory_allocated" if hw.get("gpu") else "peak RSS of the process"
    if not hw.get("gpu"):
        device += (
            f", {hw['torch_threads']} torch threads, load average {hw['load_avg_1m']} before and "
            f"{hw.get('load_avg_1m_after')} after"
        )
    head = [
        f"## Training throughput: {results['model']} ({results['weights']} weights, peft {results['peft']}, "
        f"data {results['data']})",
        "",
        f"- {results['date']} on {device}; torch {v['torch']}, transformers {v['transformers']}, trl {v['trl']}, "
        f"peft {v['peft']}, flash-attn {v['flash-attn']}, liger-kernel {v['liger-kernel']}",
        f"- `{results['command']}`",
        f"- {results['timed_steps']} timed optimizer steps after {results['untimed_steps']} untimed, "
        f"{results['repeats']} round-robin repeat(s): tokens/s is the median, spread = (max - min) / median; "
        f"tokens are real (non-padding) input tokens; memory is {memory_kind}; MFU against "
        f"{results['peak_bf16_tflops'] or 'no known'} dense bf16 TFLOP/s",
        "",
    ]
    return "\n".join(head) + markdown_table(TABLE_COLUMNS, rows)
