"""What a benchmark measures and how: FLOPs per token, MFU, peak memory, the hardware.

- FLOPs per token for training follow the issue's formula, 6N' + 12*L*d*T (N' = parameters
  without the input embedding, which is a lookup; L layers, d hidden size, T sequence
  length). For adapters the frozen weights need no weight gradients: 4N' + 2N_trainable
  + 12*L*d*T. Recomputation by activation checkpointing is not counted (model FLOPs).
- MFU = achieved FLOP/s over the accelerator's dense bf16 peak, from a table keyed by GPU
  name (datasheet values, no sparsity; consumer cards at their bf16 rate with float32
  accumulation, which is what training uses); `bench.peak_tflops` sets it for anything else.
  Every result records which peak it used and where it came from.
- Peak memory: `torch.cuda.max_memory_allocated` on a GPU; on a CPU the process's peak
  resident set (VmHWM), reset through /proc/self/clear_refs before each variant.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from pathlib import Path

import torch

# Dense bf16 tensor-core TFLOP/s (datasheets, without 2:4 sparsity). Matched against
# torch.cuda.get_device_name() in order: the first pattern found in the name wins, so a more
# specific name comes before a shorter one it contains ("H200 NVL" and "GH200" before "H200").
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 NVL", 835.0),  # Azure NC40ads_H100_v5 (datasheet 1,671 with sparsity)
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM5 (name "NVIDIA H100 80GB HBM3")
    ("H200 NVL", 835.0),  # the NVL part's clocks: as the H100 NVL (datasheet 1,671 with sparsity)
    ("GH200", 989.0),
    ("H200", 989.0),  # SXM (name "NVIDIA H200"): the H100 SXM's rates, more memory
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    # Consumer cards: bf16 with float32 accumulation (half the float16-accumulate figure).
    ("RTX 5090", 209.5),  # unverified: third-party tables (the 419 sparse figure halved), not NVIDIA's PDF
    ("RTX 4090", 165.2),  # Ada whitepaper, "BF16 with FP32 accumulate"
    ("RTX 3090", 71.0),  # unverified: third-party tables (71.16), not NVIDIA's PDF
]


def peak_tflops(device_name: str | None, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak, where it came from) for the named GPU; (None, why) for a CPU or an unknown GPU."""
    if override:
        return float(override), "bench.peak_tflops"
    if not device_name:
        return None, "no GPU"
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if pattern.lower() in device_name.lower():
            return tflops, f"bench/metrics.py table: {pattern!r}"
    return None, f"{device_name!r} is not in bench/metrics.py's table: set bench.peak_tflops"


def count_parameters(model) -> dict[str, int]:
    """Parameters without the input embedding (N'), and the trainable ones, as transformers'
    `num_parameters` counts them: a bitsandbytes 4-bit weight counts the values it packs, and on a
    peft model the adapters are included (and are what trains)."""
    return {
        "total": model.num_parameters(),
        "non_embedding": model.num_parameters(exclude_embeddings=True),
        "trainable": model.num_parameters(only_trainable=True),
    }


def train_flops_per_token(params: dict[str, int], layers: int, hidden: int, seq_len: int) -> float:
    """Model FLOPs per trained token: forward, backward to activations, weight gradients."""
    attention = 12 * layers * hidden * seq_len
    if params["trainable"] >= params["non_embedding"]:  # full fine-tune
        return 6 * params["non_embedding"] + attention
    return 4 * params["non_embedding"] + 2 * params["trainable"] + attention


def measured_matmul_tflops(device: str) -> float:
    """This device's rate on one large matrix product (bf16 on a GPU, float32 on a CPU), measured now:
    what a dry run divides a step's FLOPs by to say whether a variant would run here."""
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: kernel selection, thread pool
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 3 * 2 * n**3 / (time.perf_counter() - started) / 1e12


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    if not peak:
        return None
    return tokens_per_s * flops_per_token / (peak * 1e12)


# --- memory -------------------------------------------------------------------------


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS to the current RSS (proc(5))
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_gib(on_cuda: bool) -> dict[str, float | None]:
    if on_cuda:
        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }
    return {"peak_rss_gib": _vm_hwm_bytes() / 2**30 if _vm_hwm_bytes() else None}


def _vm_hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # elsewhere: the process-lifetime peak

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- hardware -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_hardware(on_cuda: bool) -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other work on the machine: a load above the core count makes CPU timings noise.
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "device": "cpu",
    }
    if on_cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(
            device="cuda",
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
            cuda=torch.version.cuda,
        )
    return info


def hardware_slug(info: dict) -> str:
    """A short file-name part: `nvidia-h100-80gb-hbm3`, `cpu-2c-intel-xeon-platinum-8370c`."""
    if info.get("gpu"):
        name = info["gpu"]
    else:
        model = re.sub(r"\(r\)|\(tm\)|cpu|@.*$|processor", "", info["cpu"], flags=re.I)
        name = f"cpu {info['cpu_cores']}c {model}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "flash-attn",
        "liger-kernel",
    ):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
