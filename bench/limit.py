"""Speed against this machine's limit: a real model's training and generation on the CPU, beside
the float32 matmul rate measured in the same run.

    python -m bench.limit                              # model=smollm2 and its training recipe
    python -m bench.limit model=tiny --steps 3         # any train overrides; --help for the knobs

What is reported (docs/speed.md explains the table):
- `matmul`: float32 GFLOP/s of square matmuls (torch.mm, --matmul-size) with torch's threads,
  measured before and after the training rows; their mean is the limit the shares compare with.
- training, per variant: `as configured` (the recipe as it is: model=smollm2 packs), `padded` (each
  conversation its own row, batches padded to the longest) and `packed` (TRL's best-fit packing into
  padding-free rows, one attention per conversation: `model.attn_implementation=varlen_sdpa`):
  real tokens/s (padding excluded: the attention mask's ones, or every token of a padding-free row)
  over --steps optimizer steps after --warmup untimed ones, and achieved GFLOP/s = tokens/s x (6N full fine-tune, 4N LoRA: N the model's parameters)
  plus attention (6 x layers x hidden x L^2 per conversation of L tokens), as a share of matmul.
- generation, greedy, --max-new-tokens: evaluation's generator (`common.generation.Generator`,
  left-padded batches of 16 as train/evaluate.py runs them) over the held-out prompts, batched and
  one at a time; the local server's engine (`deploy.serve.batching.BatchedGenerator`, its default
  KV budget and torch threads) with the same prompts all in flight and one after another.
Results: bench/results/<date>-limit-<hardware>.json and .md. Timings on a shared machine drift:
the load average is recorded, and ratios within one run are the numbers to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_OVERRIDES = ["model=smollm2"]
VARIANTS = {
    "as configured": [],
    "padded": ["sft.packing=false", "sft.padding_free=false", "model.attn_implementation=sdpa"],
    "packed": ["sft.packing=true", "sft.padding_free=true", "model.attn_implementation=varlen_sdpa"],
}


def matmul_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    """float32 GFLOP/s of size x size matmuls for about `seconds` (2 size^3 FLOPs each)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / elapsed / 1e9


def compose(overrides: list[str]):
    """The train config as `python -m train` composes it (the Hydra runtime values set)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import train.__main__  # noqa: F401  (registers the schemas and resolvers)
    from common.paths import PROJECT_ROOT
    from train import gguf_model

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        gguf_model.resolve_gguf(cfg.model)  # model=smollm2: the converted directory, as the recipe loads it
    return cfg


class TokenCount:
    """Wraps a data collator: per batch, its real tokens and the lengths of its conversations."""

    def __init__(self, collate):
        self.collate, self.batches = collate, []

    def __call__(self, examples):
        batch = self.collate(examples)
        if "attention_mask" in batch:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
        else:  # padding-free: conversations restart their position ids
            starts = (batch["position_ids"].flatten() == 0).nonzero().flatten().tolist()
            lengths = [b - a for a, b in zip(starts, [*starts[1:], batch["position_ids"].numel()])]
        self.batches.append(lengths)
        return batch


def step_timer():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepTimes()


def train_variant(overrides: list[str], steps: int, warmup: int, workdir: Path) -> dict:
    """Real tokens/s and achieved GFLOP/s of `warmup + steps` optimizer steps of the recipe's trainer."""
    from trl import SFTTrainer

    from train import data, lengths, model
    from train.recipe import sft_args

    cfg = compose([*overrides, f"sft.max_steps={warmup + steps}", "sft.save_strategy=no", "sft.eval_strategy=no",
                   "sft.disable_tqdm=true", f"paths.output_dir={workdir}"])  # fmt: skip
    tokenizer = model.load_tokenizer(cfg.model)
    splits, prepared = data.load_splits(cfg, tokenizer)
    net = model.load_model(cfg.model, cfg.peft, tokenizer)
    args = sft_args(cfg)
    lengths.set_training_length(args, cfg, prepared.stats)  # as training does (model=smollm2: from the data)
    trainer = SFTTrainer(model=net, args=args, train_dataset=splits["train"],
                         processing_class=tokenizer, peft_config=model.lora_config(cfg.peft))  # fmt: skip
    counter, timer = TokenCount(trainer.data_collator), step_timer()
    trainer.data_collator = counter
    trainer.add_callback(timer)
    trainer.train()
    timed = counter.batches[warmup : warmup + steps]
    seconds = timer.ends[warmup + steps - 1] - timer.ends[warmup - 1]
    config = trainer.model.config
    params = sum(p.numel() for p in trainer.model.parameters())
    per_token = (4 if cfg.peft.method != "none" else 6) * params
    tokens = sum(sum(lengths) for lengths in timed)
    attention = sum(6 * config.num_hidden_layers * config.hidden_size * n * n for b in timed for n in b)
    return {
        "steps": steps,
        "conversations_per_step": sum(len(b) for b in timed) / steps,
        "real_tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "gflops": (tokens * per_token + attention) / seconds / 1e9,
        "flops_per_token": f"{per_token // params}N",
        "parameters": params,
    }


def held_out_prompts(overrides: list[str], count: int) -> tuple[object, object, list[list[dict]]]:
    from common.generation import split_for_generation
    from train import data, model

    # Generation is served with sdpa: varlen_sdpa is packed training's attention, and the serving
    # engine (continuous batching) refuses it.
    cfg = compose([*overrides, "model.attn_implementation=sdpa"])
    tokenizer = model.load_tokenizer(cfg.model)
    splits, _ = data.load_splits(cfg, tokenizer)
    pairs = [split_for_generation(m) for m in splits["test"]["messages"]]
    prompts = [p for p, _ in filter(None, pairs)][:count]
    return model.load_model(cfg.model, cfg.peft, tokenizer).eval(), tokenizer, prompts


def evaluation_generation(generator, prompts: list[list[dict]], generate: dict) -> dict:
    """Evaluation's generator: left-padded batches of 16 (train/evaluate.py), then one at a time."""
    from train.evaluate import generate_answers

    out = {}
    for name, batch_size in (("batched", 16), ("alone", 1)):
        started = time.perf_counter()
        answers = generate_answers(
            generator.model, generator.tokenizer, prompts, generate["max_new_tokens"], batch_size
        )
        out[name] = rate(answers, time.perf_counter() - started)
    return out


def serving_generation(generator, prompts: list[list[dict]], generate: dict) -> dict:
    """The local server's engine with its defaults: every prompt in flight at once, then one after another."""
    from deploy.config import ServerSettings
    from deploy.serve.batching import BatchedGenerator

    settings = ServerSettings()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.torch_threads or threads)  # as the server runs
    ids = [generator.prompt_ids(p) for p in prompts]

    async def run() -> dict:
        engine = BatchedGenerator(generator, settings.max_batch, settings.max_queue, settings.kv_cache_mib)
        engine.start()
        try:
            out = {}
            started = time.perf_counter()
            jobs = [engine.submit(p, generate, []) for p in ids]
            out["batched"] = rate(
                await asyncio.gather(*(j.result() for j in jobs)), time.perf_counter() - started
            )
            started, answers = time.perf_counter(), []
            for p in ids:
                answers.append(await engine.submit(p, generate, []).result())
            out["alone"] = rate(answers, time.perf_counter() - started)
            out["kv_cache"] = engine.budget.describe()
            return out
        finally:
            engine.close()

    try:
        return asyncio.run(run())
    finally:
        torch.set_num_threads(threads)


def rate(answers: list[dict], seconds: float) -> dict:
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return {"answers": len(answers), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def run(overrides: list[str], steps: int, warmup: int, prompts: int, max_new_tokens: int, size: int) -> dict:
    import tempfile

    from bench import metrics
    from common.generation import Generator

    before = matmul_gflops(size)
    training = {}
    for name, extra in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="finetune-phi-limit-") as workdir:
            training[name] = train_variant([*overrides, *extra], steps, warmup, Path(workdir))
    after = matmul_gflops(size)
    limit = (before + after) / 2
    for row in training.values():
        row["share_of_matmul"] = row["gflops"] / limit
    net, tokenizer, asked = held_out_prompts(overrides, prompts)
    generator = Generator(net, tokenizer)
    generate = {"max_new_tokens": max_new_tokens, "do_sample": False}
    return {
        "kind": "limit",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "overrides": overrides,
        "hardware": metrics.describe_hardware(on_cuda=False),
        "versions": metrics.library_versions(),
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": {"before": before, "after": after, "mean": limit, "size": size},
        "training": training,
        "generation": {
            "prompts": len(asked),
            "max_new_tokens": max_new_tokens,
            "evaluation": evaluation_generation(generator, asked, generate),
            "serving": serving_generation(generator, asked, generate),
        },
    }


def results_markdown(results: dict) -> str:
    hw, mm, gen = results["hardware"], results["matmul_gflops"], results["generation"]
    lines = [
        f"## Speed against this machine's limit: {' '.join(results['overrides']) or 'defaults'}",
        "",
        f"- {results['date']} on {hw['cpu']} ({hw['cpu_cores']} cores, load average {hw['load_avg_1m']}), "
        f"torch {results['versions']['torch']} with {results['torch_threads']} threads",
        f"- float32 matmul ({mm['size']}^2): {mm['before']:.1f} GFLOP/s before training, {mm['after']:.1f} "
        f"after; the limit below is their mean, {mm['mean']:.1f}",
        "",
        "| training | conversations/step | real tokens/s | GFLOP/s | share of matmul |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["training"].items():
        lines.append(
            f"| {name} ({row['flops_per_token']} + attention) | {row['conversations_per_step']:.1f} | "
            f"{row['tokens_per_s']:.1f} | {row['gflops']:.1f} | {row['share_of_matmul']:.0%} |"
        )
    lines += [
        "",
        f"| generation ({gen['prompts']} held-out prompts, greedy, up to {gen['max_new_tokens']} tokens) "
        "| batched tokens/s | alone tokens/s | batched / alone |",
        "|---|---|---|---|",
    ]
    for name in ("evaluation", "serving"):
        row = gen[name]
        b, a = row["batched"]["tokens_per_s"], row["alone"]["tokens_per_s"]
        lines.append(f"| {name} | {b:.1f} | {a:.1f} | {b / a:.2f}x |")
    lines.append(f"\nServing engine: {gen['serving']['kv_cache']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.limit", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help=f"train overrides (default: {' '.join(DEFAULT_OVERRIDES)})"
    )
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per training variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--prompts", type=int, default=24, help="held-out prompts answered")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")

    results = run(
        args.overrides or DEFAULT_OVERRIDES,
        args.steps,
        args.warmup,
        args.prompts,
        args.max_new_tokens,
        args.matmul_size,
    )
    from bench.report import publish

    return publish(results, results_markdown(results), args.results_dir, kind="limit")


if __name__ == "__main__":
    main()
