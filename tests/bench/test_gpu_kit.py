"""The GPU kit (bench/gpu_kit.txt, gpu_kit.sh, gpu_bench.sh, gpu_preflight.py) without a GPU.

What runs here: the kit's wheels download (PyPI, once; cached), install offline from their folder
into a fresh directory the way the GPU box installs them, the preflight imports the benchmark from
there without mlflow, and `gpu_bench.sh` runs its two benchmarks as dry runs within its budget.
Training on the GPU itself runs only where one is lent (the note in README's Benchmarks section).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.paths import PROJECT_ROOT
from tests.train.test_azureml_environment import pins

KIT_LIST = PROJECT_ROOT / "bench" / "gpu_kit.txt"
NOT_IN_CONSTRAINTS = {"liger-kernel"}  # Triton kernels for the `liger` knob: GPU only


def test_the_kit_carries_the_versions_of_constraints_txt():
    kit, constraints = pins(KIT_LIST.read_text()), pins((PROJECT_ROOT / "constraints.txt").read_text())
    assert {name: constraints.get(name) for name in kit if name not in NOT_IN_CONSTRAINTS} == {
        name: version for name, version in kit.items() if name not in NOT_IN_CONSTRAINTS
    }
    assert "mlflow" not in kit and not NOT_IN_CONSTRAINTS & set(constraints)


@pytest.fixture(scope="module")
def kit(tiny_cache) -> Path:
    """The kit's wheels, downloaded once into the cache (skipped where PyPI cannot be reached)."""
    folder = tiny_cache / "gpu-kit"
    done = subprocess.run(
        ["bash", "bench/gpu_kit.sh"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "KIT": str(folder), "PY": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode and re.search(
        r"No matching distribution|Could not fetch|connection", done.stderr, re.I
    ):
        pytest.skip(f"the kit's wheels cannot be downloaded here: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"gpu kit: \d+ wheels, \d+ MiB", done.stdout)
    return folder


@pytest.mark.slow
def test_the_gpu_script_installs_the_kit_offline_and_runs_its_benchmarks_dry(kit, tmp_path):
    site = tmp_path / "site"
    env = {
        **os.environ,
        "KIT": str(kit),
        "SITE": str(site),
        "PYTHON": sys.executable,  # this venv's torch; the kit's packages come first on PYTHONPATH
        "PREFLIGHT_ARGS": "--no-gpu",
        "BENCH_ARGS": f"bench.dry_run=true paths.output_root={tmp_path / 'outputs'}",
    }
    done = subprocess.run(
        ["bash", "bench/gpu_bench.sh"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for module in ("transformers", "trl", "datasets", "hydra", "omegaconf", "torchao"):  # from the kit
        assert re.search(rf"^  {module}\S*\s+\S+\s+{re.escape(str(site))}/", done.stdout, re.M), module
    assert done.stdout.count("Dry run on") == 2  # Phi-3-mini with its knobs, then Phi-3.5-mini
    assert "| +lora_low_memory |" in done.stdout and "model=phi35_mini" in done.stdout
    assert "PREFLIGHT" not in done.stderr
