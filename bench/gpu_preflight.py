"""Before the GPU benchmark: can this box run it with the kit (bench/gpu_kit.txt)?

Prints the GPU and where each library comes from (the kit's folder or the box), checks the
versions the kit's wheels need from the box, imports what the benchmark imports (no mlflow), and
says which attention `model.attn_implementation=auto` picks here and what torch's varlen kernel
takes (its signature changed in torch 2.11). Exit status 1 names every problem.

    python -m bench.gpu_preflight            # on the GPU box (bench/gpu_bench.sh runs it first)
    python -m bench.gpu_preflight --no-gpu   # the same checks on a machine without one
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import sys

from packaging.version import Version

# What the kit's wheels require of packages they expect on the box (their Requires-Dist).
BOX_NEEDS = {
    "torch": "2.10",  # torch.nn.attention.varlen (varlen_sdpa); 2.11 for its sliding window
    "accelerate": "1.10.1",  # trl
    "huggingface_hub": "1.31",  # transformers 5.23, datasets 5.2
    "tokenizers": "0.23.1",  # transformers 5.23
    "safetensors": "0.8.0",  # transformers 5.23
    "regex": "2025.10.22",  # transformers 5.23
    "pyarrow": "24.0.0",  # datasets 5.2 (50 MB: not carried)
}
IMPORTS = (
    "transformers",
    "trl",
    "datasets",
    "peft",
    "hydra",
    "omegaconf",
    "torchao.optim",
    "bench.throughput",
)


def main(argv: list[str]) -> int:
    import torch

    problems = []
    for name, minimum in BOX_NEEDS.items():
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name} is not installed (the kit expects it on the box, >= {minimum})")
            continue
        if Version(version) < Version(minimum):
            problems.append(f"{name} {version} < {minimum}, which the kit's wheels need")
    for name in IMPORTS:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # report every one, then fail
            problems.append(f"import {name}: {type(exc).__name__}: {exc}")
            continue
        top = name.split(".")[0]
        version = md.version({"hydra": "hydra-core"}.get(top, top)) if top != "bench" else "(this checkout)"
        print(f"  {name:18s} {version:14s} {module.__file__}")
    if "mlflow" in sys.modules:
        problems.append("the benchmark imported mlflow, which the GPU box does not have")

    if torch.cuda.is_available():
        print(f"  GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    elif "--no-gpu" not in argv:
        problems.append("torch sees no CUDA GPU")
    if not problems:
        from train.config import AttnImplementation
        from train.model import resolve_attn_implementation

        print(f"  attn_implementation=auto -> {resolve_attn_implementation(AttnImplementation.auto)}")
        from torch.nn.attention.varlen import varlen_attn

        print(f"  torch varlen_attn{inspect.signature(varlen_attn)}")
    for problem in problems:
        print(f"PREFLIGHT: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
