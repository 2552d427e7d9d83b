"""Training throughput of a config, its knobs one by one, and the seed recipe.

Each variant is the composed config plus a knob's overrides (conf/bench.yaml `bench.knobs`),
trained with the same TRL `SFTTrainer` the recipe uses for `bench.untimed_steps` +
`bench.steps` optimizer steps on the same data. Per variant it records real (non-padding)
tokens/s over the timed steps, step times, MFU (bench/metrics.py), peak memory and what
`estimate=true` predicted for it.

`bench.isolate=true` (the default) trains every variant in a process of its own
(`python -m bench.throughput VARIANT.yaml DATASET_DIR RESULT.json`, the variant's resolved config
and the shared data saved by this process): a global patch (Liger's kernels, torch.compile's
caches, allocator state) cannot leak into the next variant, and each peak memory is its own.
`bench.time_budget_s` stops starting variants once the time is spent (a bounded GPU lease).

Models: `bench.weights=pretrained` loads `model.name_or_path` as training does (the tiny
model on a CPU); `bench.weights=random` builds train/architectures/<short_name>.json with
random weights (Phi-3-mini, Phi-3.5-mini: throughput needs no trained weights), on the GPU
directly. `bench.dry_run=true` builds it on the meta device and prints the plan instead.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import traceback
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
from common.paths import PROJECT_ROOT
from train import data as train_data
from train import model as train_model
from train.estimate import ARCHITECTURES_DIR, peak_memory_gib, remove_run_folder, this_machine
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
    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=train_model.lora_config(cfg.peft),
        callbacks=[timer],
    )
    params = metrics.count_parameters(trainer.model)
    trainer.train()
    memory = metrics.peak_memory_gib(on_cuda)
    checkpointed = sum(
        bool(getattr(layer, "gradient_checkpointing", False)) for layer in _decoder_layers(model)
    )

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
        "gradient_checkpointing": bool(cfg.sft.activation_checkpointing),
        "checkpointed_layers": f"{checkpointed}/{text_config.num_hidden_layers}",
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
        "estimated_peak_gib": peak_memory_gib(cfg),  # what estimate=true says, to check against the peak
        "pid": os.getpid(),
    }
    del trainer, model
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return result


def _decoder_layers(model):
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


# --- the benchmark ------------------------------------------------------------------


# A dry run calls a variant too slow to run here when one optimizer step would take longer.
DRY_RUN_MAX_STEP_S = 60


def dry_run(plan: list[dict], on_cuda: bool) -> dict:
    """Params and FLOPs per token of each variant's model, built on the meta device, and whether it
    would run on this machine: its estimated memory against this device's, one step's FLOPs against
    a matrix product's rate measured here."""
    machine, memory_gib, _ = this_machine()
    tflops = metrics.measured_matmul_tflops("cuda" if on_cuda else "cpu")
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
        sft = vcfg.sft
        flops = metrics.train_flops_per_token(
            params, config.num_hidden_layers, config.hidden_size, sft.max_length
        )
        needed = peak_memory_gib(vcfg)
        step_s = (
            flops
            * sft.per_device_train_batch_size
            * sft.max_length
            * sft.gradient_accumulation_steps
            / (tflops * 1e12)
        )
        if item["skip"]:
            status = item["skip"]
        elif needed > 0.9 * memory_gib:
            status = f"would not fit here: ~{needed:.0f} GiB of {memory_gib:.0f} GiB"
        elif step_s > DRY_RUN_MAX_STEP_S:
            status = (
                f"too slow here: ~{step_s / 60:,.0f} min a step at the {tflops:.3g} TFLOP/s measured here"
            )
        else:
            status = f"would run (~{step_s:.2g} s a step)"
        rows.append(
            {
                **_row_head(item),
                "params": params,
                "seq_len": sft.max_length,
                "flops_per_token": flops,
                "estimated_peak_gib": needed,
                "status": status,
            }
        )
    return {
        "dry_run": True,
        "machine": machine,
        "memory_gib": memory_gib,
        "matmul_tflops": tflops,
        "variants": rows,
    }


DRY_RUN_COLUMNS = [
    ("variant", "name", ""),
    ("FLOPs/token", "flops_per_token", ".4g"),
    ("at sequence length", "seq_len", "d"),
    ("est. peak GiB", "estimated_peak_gib", ".1f"),
    ("status", "status", ""),
]


def _row_head(item: dict) -> dict:
    return {"name": item["name"], "about": item["about"], "overrides": item["overrides"]}


def run_benchmark(cfg: DictConfig) -> dict:
    """Run every planned variant; write results JSON + markdown; return the results."""
    on_cuda = torch.cuda.is_available() and not cfg.sft.get("use_cpu", False)
    train_model.check_peft_hardware(cfg.peft)
    if cfg.sft.max_length is None:  # model=smollm2's "from the data" (train.lengths)
        raise BenchError(
            "sft.max_length=null takes the length from the data; the benchmark times a fixed "
            "sequence length and sizes its plan by it: set sft.max_length=<tokens>"
        )
    plan = plan_variants(cfg, on_cuda)
    if cfg.bench.steps < 2 or cfg.bench.repeats < 1:
        raise BenchError("bench.steps: time at least 2 steps; bench.repeats: at least 1")
    if cfg.bench.dry_run:
        return _dry_run_report(cfg, plan, on_cuda)
    scratch = Path(cfg.paths.output_dir)
    tokenizer = load_tokenizer(cfg)
    vocab = AutoConfig.from_pretrained(
        architecture_file(cfg.model.short_name) if cfg.bench.weights == "random" else cfg.model.name_or_path
    ).vocab_size
    dataset = bench_dataset(cfg, tokenizer, vocab, scratch)
    if cfg.bench.isolate:  # what every variant's own process trains on
        dataset.save_to_disk(str(scratch / "dataset"))
    hardware = metrics.describe_hardware(on_cuda)
    peak, peak_source = metrics.peak_tflops(hardware.get("gpu"), cfg.bench.peak_tflops)

    runs, failures = _run_rounds(cfg, plan, dataset, tokenizer, scratch, on_cuda)
    rows = _result_rows(plan, runs, failures, peak)
    hardware["load_avg_1m_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    _add_ratios(rows)
    results = {
        "kind": "train",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench.train", *_overrides()]),
        "hardware": hardware,
        "peak_bf16_tflops": peak,
        "peak_source": peak_source,
        "isolated": bool(cfg.bench.isolate),
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


def _dry_run_report(cfg: DictConfig, plan: list[dict], on_cuda: bool) -> dict:
    """bench.dry_run: each variant's estimate against this machine, printed; nothing trained."""
    results = dry_run(plan, on_cuda)
    print(
        f"Dry run on {results['machine']} ({results['memory_gib']:.0f} GiB, {results['matmul_tflops']:.3g} "
        "TFLOP/s on a matrix product measured now); FLOPs per token = 6N' + 12*L*d*T at the sequence "
        "length T of each variant (its sft.max_length); nothing trained or written.\n"
    )
    print(markdown_table(DRY_RUN_COLUMNS, results["variants"]))
    remove_run_folder(cfg)
    return results


def _run_rounds(cfg: DictConfig, plan: list[dict], dataset, tokenizer, scratch: Path, on_cuda: bool):
    """Every variant's timed runs, `bench.repeats` rounds within `bench.time_budget_s`: (runs per
    variant, failure per variant index); a variant out of time gets its `skip` reason."""
    # Round-robin repeats: slow drift of a shared machine hits every variant alike, and
    # the spread between a variant's own repeats says which differences are noise.
    started = time.monotonic()
    runs: list[list[dict]] = [[] for _ in plan]
    failures: dict[int, str] = {}
    for repeat in range(cfg.bench.repeats):
        for i, item in enumerate(plan):
            if item["skip"] or i in failures:
                continue
            left = cfg.bench.time_budget_s - (time.monotonic() - started) if cfg.bench.time_budget_s else None
            if left is not None and left < MIN_SECONDS_PER_VARIANT:
                if i == 0 and not runs[0]:
                    raise BenchError(
                        f"bench.time_budget_s={cfg.bench.time_budget_s:g} leaves no time for the recipe"
                    )
                if not runs[i]:
                    item["skip"] = (
                        f"bench.time_budget_s={cfg.bench.time_budget_s:g} spent ({left:.0f} s left)"
                    )
                continue
            log.info("%s (repeat %d/%d)", item["name"], repeat + 1, cfg.bench.repeats)
            workdir = scratch / f"v{i}" / f"repeat{repeat}"
            try:
                if cfg.bench.isolate:
                    runs[i].append(run_in_own_process(item["cfg"], scratch / "dataset", workdir, left))
                else:
                    runs[i].append(run_variant(item["cfg"], dataset, tokenizer, workdir, on_cuda))
            except Exception as exc:  # an OOM or a knob that breaks is a result too
                if i == 0:
                    raise  # without the recipe's own number nothing compares
                log.exception("%s failed", item["name"])
                failures[i] = f"{type(exc).__name__}: {str(exc)[:300]}"
            if i in failures:  # out of the except block, an OOM's frames no longer hold the model
                gc.collect()
                if on_cuda:
                    torch.cuda.empty_cache()
    return runs, failures


def _result_rows(plan: list[dict], runs: list[list[dict]], failures: dict[int, str], peak) -> list[dict]:
    """One row per variant: its summary and MFU, or why it failed or was skipped."""
    rows = []
    for i, item in enumerate(plan):
        row = _row_head(item)
        if i in failures:
            row.update(status="failed", reason=failures[i])
        elif runs[i]:
            row.update(status="ok", **summarise(runs[i]))
            row["mfu"] = metrics.mfu(row["tokens_per_s"], row["flops_per_token"], peak)
        else:
            row.update(status="skipped", reason=item["skip"])
        rows.append(row)

    return rows


# A variant is not started with less of bench.time_budget_s left: model build, warm-up and the
# timed steps of a 3.8B model take about that on one H200.
MIN_SECONDS_PER_VARIANT = 45


class VariantFailed(RuntimeError):
    """A variant's own process failed; the message is its error."""


def run_in_own_process(cfg: DictConfig, dataset_dir: Path, workdir: Path, timeout: float | None) -> dict:
    """`run_variant` in a fresh Python process (see the module docstring); its result row."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file, result_file = workdir / "variant.yaml", workdir / "result.json"
    OmegaConf.save(cfg, config_file, resolve=True)
    command = [sys.executable, "-m", "bench.throughput", str(config_file), str(dataset_dir), str(result_file)]
    try:
        done = subprocess.run(command, cwd=PROJECT_ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VariantFailed(f"not finished in the {timeout:.0f} s left of bench.time_budget_s") from None
    if not result_file.exists():
        raise VariantFailed(
            f"its process ended with exit status {done.returncode} and no result (out of memory?)"
        )
    result = json.loads(result_file.read_text(encoding="utf-8"))
    if "error" in result:
        raise VariantFailed(result["error"])
    return result


def _run_variant_file(config_file: str, dataset_dir: str, result_file: str) -> None:
    """The variant's own process: train it, write its row (or its error) as JSON."""
    cfg = OmegaConf.load(config_file)
    on_cuda = torch.cuda.is_available() and not cfg.sft.get("use_cpu", False)
    try:
        dataset = Dataset.load_from_disk(dataset_dir)
        result = run_variant(cfg, dataset, load_tokenizer(cfg), Path(config_file).parent, on_cuda)
    except Exception as exc:
        traceback.print_exc()  # the whole story in the log; the row gets its last line
        result = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    Path(result_file).write_text(json.dumps(result, default=str), encoding="utf-8")


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
    ("est. GiB", "estimated_peak_gib", ".1f"),
    ("ckpt layers", "checkpointed_layers", ""),
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
        f"tokens are real (non-padding) input tokens; memory is {memory_kind} (est.: what estimate=true "
        f"predicts); MFU against {results['peak_bf16_tflops'] or 'no known'} dense bf16 TFLOP/s "
        f"({results['peak_source']})",
        f"- {'every variant in a process of its own' if results['isolated'] else 'all variants in one process'}",
        "",
    ]
    return "\n".join(head) + markdown_table(TABLE_COLUMNS, rows)


if __name__ == "__main__":  # a variant's own process: see run_in_own_process
    _run_variant_file(*sys.argv[1:4])
