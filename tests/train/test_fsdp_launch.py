"""The recipe's own FSDP launch path: `accelerate launch --config_file conf/accelerate/fsdp.yaml
-m train`, SFTTrainer and all, trains a model that is an FSDPModule on every rank.

GPU-only, and on 2 GPUs at least: accelerate 1.15 switches FSDP on only for multi-GPU (and other
accelerator) processes, never for CPU ones (accelerate/state.py; on CPU processes the recipe stops
instead, tests/train/test_distributed.py), and one process is not distributed at all. On CPU,
FSDP2 itself is tested with torch's `fully_shard` on 2 gloo processes (tests/train/fsdp2_worker.py).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from common.paths import PROJECT_ROOT
from tests.conftest import QUICK_TRAIN

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_accelerate_fsdp_launch_of_the_recipe_trains_an_fsdp_module_on_every_rank(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("accelerate enables FSDP only across 2 or more GPUs")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "accelerate.commands.launch"),
            *("--config_file", str(PROJECT_ROOT / "conf" / "accelerate" / "fsdp.yaml")),
            *("--num_processes", "2", "--mixed_precision", "no", "-m", "train"),
            *QUICK_TRAIN,
            f"paths.output_root={tmp_path}/outputs",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # Logged by train.launch.sharded_model_check once accelerate has prepared the model; it stops the
    # run when FSDP2 is on and the model is not an FSDPModule.
    found = re.findall(r"FSDP2: rank (\d) trains \w+, an FSDPModule sharded over 2 processes", output)
    assert sorted(found) == ["0", "1"], output[-4000:]
