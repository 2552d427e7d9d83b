"""Before launching: memory, tokens, time and cost of a training config, without loading weights.

    python -m train estimate=true                                   # the tiny default, this machine
    python -m train +profile=a100 estimate=true                     # Phi-3.5-mini, full, one A100
    python -m train +profile=24gb estimate=true                     # QLoRA on a 24 GB card
    python -m train +profile=a100 peft=lora hardware=nc40ads_h100_v5 estimate=true

The model is built on PyTorch's meta device from its config (`accelerate.init_empty_weights`),
with the adapters peft would add (`get_peft_model`): exact parameter counts, as transformers
and peft count them, and no weights read. The config comes from a local directory with a
config.json, the Hugging Face cache, or, for the hub models this project ships configs for,
the architecture numbers below, so it works offline. The data are prepared with the model's
tokenizer exactly as training would (`train.data.prepare_for`) to count tokens; where the
tokenizer or the data cannot be read (offline, hub ids) the estimate says so and prices
a million tokens instead.

The machine is `hardware` (conf/hardware/): a named GPU machine, or `local` (the default and the
CPU profile): this machine's CUDA GPU, or its CPU and RAM, read when the estimate runs.

Memory per GPU (approximate, about +-20%: the allocator and CUDA context come on top):
- weights: parameters x bytes of `model.dtype`; QLoRA: 4-bit NF4 decoder linears (0.5 byte
  plus quantisation constants), the rest in bf16;
- gradients and optimizer state: trainable parameters x dtype bytes, and AdamW's two moments
  (in the parameter dtype, one byte each for 8-bit optimizers; peft keeps LoRA weights in float32);
- activations for `per_device_train_batch_size x max_length` tokens (the worst case: every
  row full): per decoder layer the tensors autograd keeps; a layer that activation checkpointing
  covers (`activation_checkpointing_kwargs.every_n_layers`: layers 0, n, 2n, ...) keeps only its
  input, in host memory with `offload`, and one layer at a time is recomputed in the backward;
  plus TRL's fused LM head, which scores 4096 tokens at a time and never holds the whole logits;
- `method=dpo`: each row is a chosen and a rejected sequence in one forward (twice the tokens, up
  to `dpo.max_length` each); the reference model is the adapter switched off with peft (nothing
  more), a second copy of the weights for a full fine-tune, or nothing with
  `precompute_ref_log_probs` (scored once before training). `method=kto` likewise (its KL term's
  forward keeps no activations).
Time = tokens x epochs / (hardware tokens/s, scaled to this model's size, x GPUs); cost = time x
$/hour, where the hardware file gives them: for `local` nothing is known until measured
(`python -m bench.train`). Evaluation, start-up and checkpoint writes are not included.
Nothing is written: no run folder stays behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from train.config import ModelDtype, PeftMethod, TrainingMethod
from train.lengths import configured, training_length
from train.model import ConfigError, loads_in_4bit, lora_config

log = logging.getLogger(__name__)

GIB = 1024**3

# The hub models' config.json files, committed (train/architectures/<model.short_name>.json),
# so an offline machine can still size them; bench.train builds the same files with random weights.
ARCHITECTURES_DIR = Path(__file__).resolve().parent / "architectures"

LORA_BYTES = 4  # peft keeps adapter weights in float32 (autocast_adapter_dtype)
NF4_BYTES = 0.5
# Quantisation constants per weight: one float32 absmax per 64 weights (0.5 bit), or with
# double quantisation an 8-bit one plus a float32 per 256 of those (~0.127 bit).
NF4_CONSTANT_BYTES = {True: 0.127 / 8, False: 0.5 / 8}
# TRL 1.16's fused LM head (trl/kernels/chunked_logprob.py) projects [4096 tokens, <= 32768 vocab]
# tiles in the compute dtype: one tile and its gradient at a time, never (tokens, vocab) logits.
LM_HEAD_TILE_TOKENS, LM_HEAD_TILE_VOCAB = 4096, 32768
# A throughput figure measured for one model size scales to others only nearby: a tiny model is
# bound by overheads, not FLOPs.
THROUGHPUT_SCALING_LIMIT = 2.0


@dataclass
class Estimate:
    model: str
    method: str
    params: int
    trainable_params: int
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    reference_gib: float  # DPO/KTO full fine-tunes: the starting model kept to score against
    activations_gib: float
    total_gib: float
    machine: str
    memory_gib: float
    fits: bool
    tokens_per_micro_batch: int
    max_length: int  # the rows' length the micro-batch is sized for
    max_length_note: str  # where it comes from, when not the configured number
    checkpointed_layers: int
    layers: int
    offload: bool
    train_tokens: int | None
    tokens_note: str
    total_tokens: int | None
    tokens_per_second: float | None
    throughput_note: str
    hours: float | None
    usd: float | None
    usd_per_million_tokens: float | None


def model_config(model_cfg):
    """The model's transformers config: local directory, HF cache, or the shipped numbers."""
    from transformers import AutoConfig

    source = model_cfg.name_or_path
    if (Path(source) / "config.json").is_file():
        return AutoConfig.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code)
    try:
        return AutoConfig.from_pretrained(
            source,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            local_files_only=True,  # never download for an estimate
        )
    except OSError:
        pass
    shipped = ARCHITECTURES_DIR / f"{model_cfg.short_name}.json"
    if shipped.is_file():
        numbers = {
            k: v for k, v in json.loads(shipped.read_text(encoding="utf-8")).items() if k != "_comment"
        }
        return AutoConfig.for_model(numbers.pop("model_type"), **numbers)
    known = ", ".join(sorted(p.stem for p in ARCHITECTURES_DIR.glob("*.json")))
    raise ConfigError(
        f"model.name_or_path={source}: no config.json there, not in the Hugging Face cache, and "
        f"model.short_name={model_cfg.short_name} is not one of the shipped architectures ({known}). "
        "Point model.name_or_path at a directory holding the model's config.json (the weights are not needed)."
    )


def count_parameters(config, peft_cfg) -> dict[str, int]:
    """Parameters of the model built on the meta device: in all, in the decoder's linear layers
    (what QLoRA quantises) and trainable (all of them, or the adapters peft adds)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)
    total = meta.num_parameters()
    head = meta.get_output_embeddings()
    linear = sum(m.weight.numel() for m in meta.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    adapters = lora_config(peft_cfg)
    if adapters is None:
        return {"total": total, "decoder_linear": linear, "trainable": total}
    from peft import get_peft_model

    with init_empty_weights():  # the adapter weights on the meta device too
        trainable, _ = get_peft_model(meta, adapters).get_nb_trainable_parameters()
    return {"total": total, "decoder_linear": linear, "trainable": trainable}


def _dtype_bytes(model_cfg, sft_cfg) -> int:
    if model_cfg.dtype == ModelDtype.auto:
        return 2 if sft_cfg.bf16 or sft_cfg.fp16 else 4  # what a GPU with bf16 would load
    return getattr(torch, model_cfg.dtype).itemsize


def _optimizer_bytes(optim: str, param_bytes: int) -> float:
    """Optimizer state per trainable parameter: AdamW keeps two moments in the parameter dtype."""
    if "8bit" in optim:
        return 2  # two 8-bit moments (torchao's or bitsandbytes'), scales aside
    if "4bit" in optim:
        return 1
    if optim.startswith(("sgd", "adafactor")):
        return 0  # plain SGD; Adafactor's factored moments are negligible
    return 2 * param_bytes


def checkpointing(sft_cfg, layers: int) -> tuple[int, bool]:
    """(decoder layers activation checkpointing covers, whether their inputs go to host memory),
    from the sft keys as transformers reads them (`activation_checkpointing*` over the older
    `gradient_checkpointing*` names)."""
    enabled = sft_cfg.get("activation_checkpointing")
    enabled = sft_cfg.gradient_checkpointing if enabled is None else enabled
    kwargs = (
        sft_cfg.get("activation_checkpointing_kwargs") or sft_cfg.get("gradient_checkpointing_kwargs") or {}
    )
    if not enabled:
        return 0, False
    every = int(kwargs.get("every_n_layers", 1))
    return len(range(0, layers, every)), bool(kwargs.get("offload", False))


def activation_bytes(
    config, tokens: int, dtype_bytes: int, checkpointed: int, offload: bool, lora: bool
) -> float:
    """Activations autograd keeps for one micro-batch of `tokens` tokens (see the docstring)."""
    hidden = config.hidden_size
    kv = getattr(config, "num_key_value_heads", config.num_attention_heads) * (
        hidden // config.num_attention_heads
    )
    # Per token per decoder layer: norm inputs, projection inputs, q/k/v and attention output
    # (memory-efficient attention keeps no seq x seq matrix), gate/up and their product.
    per_layer = 6 * hidden + 2 * kv + 4 * config.intermediate_size
    if lora:
        per_layer += 3 * hidden + config.intermediate_size  # dropout copies feeding the adapters
    kept = per_layer * (config.num_hidden_layers - checkpointed)
    if checkpointed:
        # each covered layer keeps its input (on the host with offload); the backward recomputes one
        # layer at a time and holds its activations and their gradients
        kept += (0 if offload else hidden * checkpointed) + 2 * per_layer
    lm_head = 2 * min(tokens, LM_HEAD_TILE_TOKENS) * min(config.vocab_size, LM_HEAD_TILE_VOCAB)
    return tokens * kept * dtype_bytes + lm_head * dtype_bytes


def estimate_memory(cfg: DictConfig, config, counts: dict[str, int], max_length: int) -> dict[str, float]:
    """Bytes per device of each part, for micro-batches of rows of `max_length` tokens."""
    method = cfg.peft.method
    dtype_bytes = _dtype_bytes(cfg.model, cfg.sft)
    total, trainable = counts["total"], counts["trainable"]
    if method == PeftMethod.none:
        param_bytes = dtype_bytes
        weights = total * dtype_bytes
    else:
        param_bytes = LORA_BYTES
        if loads_in_4bit(cfg.peft):
            linear = counts["decoder_linear"]
            per_weight = NF4_BYTES + NF4_CONSTANT_BYTES[bool(cfg.peft.bnb_4bit_use_double_quant)]
            base = linear * per_weight + (total - linear) * 2
        else:
            base = total * dtype_bytes
        weights = base + trainable * LORA_BYTES
    preference = cfg.get("method", "sft") != "sft"
    sequences_per_row = 2 if cfg.get("method") == "dpo" else 1  # chosen and rejected in one forward
    tokens = cfg.sft.per_device_train_batch_size * max_length * sequences_per_row
    own_copy = preference and method == PeftMethod.none and not cfg[cfg.method].precompute_ref_log_probs
    half_precision = dtype_bytes == 2 or cfg.sft.bf16 or cfg.sft.fp16  # autocast keeps 2-byte activations
    checkpointed, offload = checkpointing(cfg.sft, config.num_hidden_layers)
    activations = activation_bytes(
        config, tokens, 2 if half_precision else 4, checkpointed, offload, method != PeftMethod.none
    )
    return {
        "checkpointed_layers": checkpointed,
        "offload": offload,
        "trainable": trainable,
        "weights": weights,
        "gradients": trainable * param_bytes,
        "optimizer": trainable * _optimizer_bytes(cfg.sft.optim, param_bytes),
        "reference": total * dtype_bytes if own_copy else 0,
        "activations": activations,
        "tokens_per_micro_batch": tokens,
    }


def count_tokens(cfg: DictConfig) -> tuple[int | None, int | None, str, dict | None]:
    """(train tokens, train rows, note, stats.json) of the prepared data; None with the reason when
    unavailable."""
    from train import data, model

    try:
        tokenizer = model.load_tokenizer(cfg.model)
        prepared = data.prepare_for(cfg, tokenizer)
    except Exception as err:  # offline hub ids, missing files: the memory part still stands
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        return None, None, f"unavailable ({type(err).__name__}: {reason})", None
    tokens, rows = prepared.stats["tokens"]["train"], prepared.stats["train"]
    note = f"prepared in {prepared.dir}"
    cap = cfg.data.max_train_rows
    if cap and rows > cap:  # training uses the first `cap` rows
        tokens, rows = round(tokens * cap / rows), cap
        note += f"; scaled to data.max_train_rows={cap}"
    return tokens, rows, note, prepared.stats


def estimate_length(cfg: DictConfig, config, stats: dict | None) -> tuple[int, str]:
    """(max_length the memory is sized for, where it comes from): the configured one, else the
    longest prepared row as training takes it (train.lengths), else the model's context."""
    if configured(cfg) is not None:
        return configured(cfg), ""
    if stats and (stats.get("tokens") or {}).get("max"):
        return training_length(cfg, stats).max_length, " (from the data: the longest kept row)"
    context = getattr(config, "max_position_embeddings", None) or 2048
    return context, " (from the data, unread here: sized for the model's context, the worst case)"


def _method(peft_cfg) -> TrainingMethod:
    """What `hardware.tokens_per_second` was measured with for this config."""
    if loads_in_4bit(peft_cfg):
        return TrainingMethod.qlora
    return TrainingMethod.full if peft_cfg.method == PeftMethod.none else TrainingMethod.lora


def describe_machine(hardware) -> tuple[str, float, int]:
    """(name, memory per device in GiB, devices) of the hardware, or of this machine for `local`."""
    if hardware.name != "local":
        return hardware.name, hardware.gpu_memory_gib, hardware.gpus
    return this_machine()


def this_machine() -> tuple[str, float, int]:
    """(name, memory per device in GiB, devices): the CUDA GPU, else the CPU and its RAM."""
    if torch.cuda.is_available():
        memory = torch.cuda.get_device_properties(0).total_memory / GIB
        return f"this machine ({torch.cuda.get_device_name(0)})", memory, torch.cuda.device_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"this machine ({os.cpu_count()} CPU cores, no GPU; memory: its RAM)", ram, 1


def throughput_of(hardware, method: TrainingMethod, params: int, devices: int) -> tuple[float | None, str]:
    """(tokens/s of the whole machine, where the figure comes from or why there is none)."""
    rate = hardware.tokens_per_second.get(method)
    if not rate:
        machine = "this machine" if hardware.name == "local" else hardware.name
        return None, (
            f"not known for {machine} ({method}): measure it (python -m bench.train) and set "
            f"hardware.tokens_per_second.{method}=<tokens/s>"
        )
    ratio = hardware.reference_params / params
    if not 1 / THROUGHPUT_SCALING_LIMIT <= ratio <= THROUGHPUT_SCALING_LIMIT:
        return None, (
            f"not known: hardware.tokens_per_second is for {hardware.reference_params:.3g}-parameter models and "
            f"does not scale to {params:,} parameters; measure this one (python -m bench.train)"
        )
    return rate * ratio * devices, "hardware.tokens_per_second, scaled"


def peak_memory_gib(cfg: DictConfig) -> float:
    """The memory part of the estimate alone (no tokenizer, no data): GiB per device."""
    config = model_config(cfg.model)
    max_length, _ = estimate_length(cfg, config, None)
    memory = estimate_memory(cfg, config, count_parameters(config, cfg.peft), max_length)
    return _total(memory) / GIB


def _total(memory: dict) -> float:
    return sum(memory[k] for k in ("weights", "gradients", "optimizer", "reference", "activations"))


def build_estimate(cfg: DictConfig) -> Estimate:
    config = model_config(cfg.model)
    counts = count_parameters(config, cfg.peft)
    train_tokens, rows, note, stats = count_tokens(cfg)
    max_length, length_note = estimate_length(cfg, config, stats)
    memory = estimate_memory(cfg, config, counts, max_length)
    total = _total(memory)
    machine, memory_gib, devices = describe_machine(cfg.hardware)

    sft = cfg.sft
    global_batch = sft.per_device_train_batch_size * sft.gradient_accumulation_steps * devices
    total_tokens = None
    if sft.max_steps and sft.max_steps > 0 and rows:  # max_steps wins over epochs, as in the Trainer
        per_row = max_length if sft.packing else min(max_length, train_tokens / rows)
        total_tokens = round(sft.max_steps * global_batch * per_row)
    elif train_tokens is not None:
        total_tokens = round(train_tokens * sft.num_train_epochs)

    throughput, throughput_note = throughput_of(cfg.hardware, _method(cfg.peft), counts["total"], devices)
    hours = total_tokens / throughput / 3600 if throughput and total_tokens is not None else None
    price = cfg.hardware.usd_per_hour
    return Estimate(
        model=cfg.model.name_or_path,
        method=cfg.peft.method,
        params=counts["total"],
        trainable_params=memory["trainable"],
        weights_gib=memory["weights"] / GIB,
        gradients_gib=memory["gradients"] / GIB,
        optimizer_gib=memory["optimizer"] / GIB,
        reference_gib=memory["reference"] / GIB,
        activations_gib=memory["activations"] / GIB,
        total_gib=total / GIB,
        machine=machine,
        memory_gib=memory_gib,
        fits=total / GIB <= 0.9 * memory_gib,  # ~10% for the CUDA context and fragments
        tokens_per_micro_batch=memory["tokens_per_micro_batch"],
        max_length=max_length,
        max_length_note=length_note,
        checkpointed_layers=memory["checkpointed_layers"],
        layers=config.num_hidden_layers,
        offload=memory["offload"],
        train_tokens=train_tokens,
        tokens_note=note,
        total_tokens=total_tokens,
        tokens_per_second=throughput,
        throughput_note=throughput_note,
        hours=hours,
        usd=hours * price if hours is not None and price is not None else None,
        usd_per_million_tokens=price / 3600 / throughput * 1e6 if throughput and price is not None else None,
    )


def _checkpointing_text(est: Estimate) -> str:
    if not est.checkpointed_layers:
        return "activation checkpointing off"
    covered = (
        "every layer"
        if est.checkpointed_layers == est.layers
        else f"{est.checkpointed_layers} of {est.layers} layers"
    )
    return f"activation checkpointing on {covered}" + (
        ", inputs offloaded to host memory" if est.offload else ""
    )


def _reference_lines(est: Estimate, cfg: DictConfig) -> list[str]:
    """The DPO/KTO reference model's line: what it costs, or why nothing."""
    method = cfg.get("method", "sft")
    if method == "sft":
        return []
    if est.reference_gib:
        how = f"a second copy; {method}.precompute_ref_log_probs=true keeps none"
    elif cfg.peft.method != PeftMethod.none:
        how = "the adapter switched off: no second copy"
    else:
        how = "log-probs precomputed before training: no second copy"
    return [f"    reference    {est.reference_gib:8.2f} GiB  ({method}: {how})"]


def report(est: Estimate, cfg: DictConfig) -> str:
    sft = cfg.sft
    verdict = "fits" if est.fits else "DOES NOT FIT (keep ~10% free)"
    lines = [
        "",
        f"Estimate for {est.model} ({est.method}) on {est.machine}; no weights loaded.",
        f"  parameters     {est.params:,} ({est.trainable_params:,} trainable)",
        f"  memory per device, {sft.per_device_train_batch_size} x {est.max_length}{est.max_length_note}"
        f"{' x 2 (chosen and rejected)' if cfg.get('method') == 'dpo' else ''} = "
        f"{est.tokens_per_micro_batch:,} tokens per micro-batch, {_checkpointing_text(est)}:",
        f"    weights      {est.weights_gib:8.2f} GiB",
        f"    gradients    {est.gradients_gib:8.2f} GiB",
        f"    optimizer    {est.optimizer_gib:8.2f} GiB  ({sft.optim})",
        *_reference_lines(est, cfg),
        f"    activations  {est.activations_gib:8.2f} GiB",
        f"    total        {est.total_gib:8.2f} GiB of {est.memory_gib:.4g} GiB: {verdict}",
    ]
    if not est.fits:
        lines.append(
            "    try: sft.activation_checkpointing=true (sft.activation_checkpointing_kwargs.every_n_layers=1), a "
            "smaller sft.per_device_train_batch_size with more sft.gradient_accumulation_steps, peft=lora or "
            "peft=qlora, or FSDP/ZeRO-3 over several GPUs"
        )
    if est.train_tokens is None:
        lines.append(f"  data tokens    {est.tokens_note}")
    else:
        lines.append(f"  data tokens    {est.train_tokens:,} train ({est.tokens_note})")
    if est.tokens_per_second:
        lines.append(f"  throughput     {est.tokens_per_second:,.0f} tokens/s ({est.throughput_note})")
    else:
        lines.append(f"  throughput     {est.throughput_note}")
    if est.hours is not None:
        duration = f"{est.hours:.2f} h" if est.hours >= 0.1 else f"{est.hours * 3600:.0f} s"
        lines.append(f"  training       {est.total_tokens:,} tokens: {duration}")
    if est.usd is not None:
        lines.append(f"  cost           ${est.usd:,.2f} at ${cfg.hardware.usd_per_hour}/h")
    elif cfg.hardware.usd_per_hour is None:
        lines.append("  cost           no hourly price for this hardware (set hardware.usd_per_hour)")
    if est.usd_per_million_tokens is not None:
        lines.append(f"  per 1M tokens  ${est.usd_per_million_tokens:.3f}")
    return "\n".join(lines)


def estimate(cfg: DictConfig) -> Estimate:
    """Print the estimate; write nothing (the run folder Hydra made for it is removed)."""
    est = build_estimate(cfg)
    print(report(est, cfg))
    remove_run_folder(cfg)
    return est


def remove_run_folder(cfg: DictConfig) -> None:
    """Remove the run folder Hydra creates before any command runs, when it holds only Hydra's own
    files (its .hydra/ record and the log): a command that trains nothing leaves no run behind."""
    run_dir = Path(cfg.paths.output_dir)
    if not run_dir.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:  # the runs/ and task folders it was the first in
        if parent == Path(cfg.paths.output_root) or any(parent.iterdir()):
            break
        parent.rmdir()
