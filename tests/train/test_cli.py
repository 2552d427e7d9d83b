"""The real command line: `python -m train` in a subprocess, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from train.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

QUICK = [
    "data.max_train_rows=64",
    "data.max_eval_rows=16",
    "sft.max_steps=2",
    "sft.disable_tqdm=true",
    "eval.generate_samples=0",
    "logger.log_model=false",
]


def train_cli(*args, tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "train", *args, f"paths.output_root={tmp_path}/outputs"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_multirun_gives_one_run_dir_and_one_mlflow_run_per_point(tmp_path):
    result = train_cli("-m", "sft.learning_rate=1e-3,3e-3", *QUICK, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((sweep / n / "summary.json").exists() for n in ("0", "1"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("finetune-phi").experiment_id])
    assert sorted(r.data.params["sft.learning_rate"] for r in runs) == ["0.001", "0.003"]


def test_unknown_profile_is_named_with_the_available_ones(tmp_path):
    result = train_cli("+profile=a1000", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "a1000" in result.stderr and "a100" in result.stderr and "24gb" in result.stderr


def test_misspelt_key_is_named(tmp_path):
    result = train_cli("sft.learning_rat=1e-3", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
