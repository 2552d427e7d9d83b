"""Schema for `conf/bench.yaml`: the training config's schema plus a `bench` section.

The benchmark composes the same groups as `python -m train` (model, data, peft, sft, ...),
so a profile or override that works for training works here, and the `bench` keys are
typed too: a misspelt `bench.stpes=5` fails when Hydra composes the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from train.config import make_train_schema, register_configs


@dataclass
class KnobConfig:
    # Config overrides (`key=value`, keys of the composed config) that switch the knob on.
    overrides: list[str] = field(default_factory=list)
    # What it needs to run: `cuda` and/or importable module names (flash_attn, liger_kernel).
    # A variant whose needs are missing is listed as skipped with the reason, not run.
    needs: list[str] = field(default_factory=list)
    # One line for the results table.
    about: str = ""


@dataclass
class BenchConfig:
    # Optimizer steps that are timed, after `untimed_steps` that are not (allocator
    # warm-up, torch.compile, first-batch caches).
    steps: int = 10
    untimed_steps: int = 3
    # Run the whole plan this many times, round-robin; tokens/s is the median of the repeats.
    repeats: int = 1
    # Also run the seed recipe's settings (knob `seed_recipe`) in the same invocation.
    baseline: bool = True
    # Knob names run one by one on top of the configured recipe, each as its own row.
    ablations: list[str] = field(default_factory=list)
    # name -> KnobConfig fields; untyped here so `+bench.knobs.NAME={...}` works on the command
    # line (OmegaConf cannot add to a dict of dataclasses); checked against KnobConfig on use.
    knobs: dict[str, Any] = field(default_factory=dict)
    # pretrained: load `model.name_or_path` as training does. random: build the
    # architecture in train/architectures/<model.short_name>.json with random weights.
    weights: str = "pretrained"
    # recipe: the configured `data` group, tokenized by the model's chat template.
    # synthetic: pre-tokenized random ids with ultrachat-like lengths (needs no tokenizer).
    data: str = "recipe"
    # Synthetic conversations: mean length in tokens (null: half of sft.max_length) and
    # the spread of the log-normal length distribution.
    synthetic_mean_tokens: int | None = None
    synthetic_length_sigma: float = 0.6
    # Train every variant in a process of its own, so a global patch (Liger's kernels, compile
    # caches) cannot leak into the next one and each peak memory is its own.
    isolate: bool = True
    # Stop starting variants once this many seconds have passed (null: no limit); a started
    # variant's own process is stopped when the budget ends.
    time_budget_s: float | None = None
    # Dense bf16 TFLOP/s of the accelerator for MFU; null looks the GPU up in bench/metrics.py.
    peak_tflops: float | None = None
    # Where the JSON and markdown results go; names are <date>-<hardware>[-n].json/.md.
    results_dir: str = "${paths.root_dir}/bench/results"
    # Print the plan (variants, FLOPs per token, params) without training or writing.
    dry_run: bool = False


def register_bench_configs() -> None:
    """Register `bench_schema` (train schema + `bench`) next to `train_schema`."""
    register_configs()
    TrainConfig = make_train_schema()

    @dataclass
    class BenchSchema(TrainConfig):
        bench: BenchConfig = field(default_factory=BenchConfig)

    ConfigStore.instance().store(name="bench_schema", node=BenchSchema)
