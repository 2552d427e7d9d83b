"""Checkpoints and exact resume: a real SIGTERM to a real training process, then `resume=auto`.

Tolerance: the resumed run must reproduce the uninterrupted run of the same seed to 1e-6
(loss per step and every weight). On this CPU stack it is bit-identical: the Trainer restores
optimizer, scheduler, RNG states and the data position.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from omegaconf import open_dict
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from common.paths import PROJECT_ROOT
from tests.conftest import compose_config
from train.checkpoint import (
    EXIT_INTERRUPTED,
    ResumeGuard,
    StopOnSignal,
    find_resume_checkpoint,
    is_complete,
)
from train.model import ConfigError
from train.recipe import run

TOLERANCE = 1e-6
# 64 rows at batch 8: 8 steps per epoch, 40 steps in all, a checkpoint every 5.
QUICK = [
    "+profile=cpu",
    "data.max_train_rows=64",
    "data.max_eval_rows=16",
    "sft.per_device_train_batch_size=8",
    "sft.max_steps=40",
    "sft.save_steps=5",
    "sft.logging_steps=1",
    "sft.disable_tqdm=true",
    "eval.generate_samples=0",
    "logger.log_model=false",
]


def fake_checkpoint(root: Path, step: int, state: str | None = "valid") -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state == "valid":
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "truncated":
        (path / "trainer_state.json").write_text('{"global_step": ')
    elif state == "wrong_step":
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step - 1}))
    return path


def test_auto_picks_the_newest_complete_checkpoint_never_a_half_written_one(tmp_path):
    good = fake_checkpoint(tmp_path, 10)
    fake_checkpoint(tmp_path, 5)
    fake_checkpoint(tmp_path, 20, state=None)  # cut off before trainer_state.json
    fake_checkpoint(tmp_path, 30, state="truncated")
    fake_checkpoint(tmp_path, 40, state="wrong_step")
    assert find_resume_checkpoint("auto", tmp_path) == good
    assert not any(is_complete(tmp_path / f"checkpoint-{n}") for n in (20, 30, 40))


def test_auto_without_checkpoints_starts_at_step_zero(tmp_path):
    assert find_resume_checkpoint("auto", tmp_path / "checkpoints") is None
    fake_checkpoint(tmp_path, 3, state=None)
    assert find_resume_checkpoint("auto", tmp_path) is None


def test_none_refuses_to_overwrite_existing_checkpoints(tmp_path):
    fake_checkpoint(tmp_path, 10)
    with pytest.raises(ConfigError, match="resume=auto"):
        find_resume_checkpoint("none", tmp_path)


def test_explicit_path_must_be_complete(tmp_path):
    run_dir = tmp_path / "other_run"
    good = fake_checkpoint(run_dir / "checkpoints", 8)
    half = fake_checkpoint(run_dir / "checkpoints", 9, state=None)
    assert find_resume_checkpoint(str(run_dir), tmp_path / "mine") == good
    assert find_resume_checkpoint(str(good), tmp_path / "mine") == good
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        find_resume_checkpoint(str(half), tmp_path / "mine")
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        find_resume_checkpoint(str(tmp_path / "empty"), tmp_path / "mine")


def test_a_resume_that_would_start_over_is_an_error(tmp_path):
    guard = ResumeGuard(fake_checkpoint(tmp_path, 12))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(RuntimeError, match="step 12 but the trainer starts at step 0"):
        guard.on_train_begin(args, TrainerState(global_step=0), TrainerControl())
    guard.on_train_begin(args, TrainerState(global_step=12), TrainerControl())  # the right step passes


def test_sigint_asks_for_a_checkpoint_and_a_stop(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback = StopOnSignal(Accelerator(cpu=True))
    state, control = TrainerState(global_step=3), TrainerControl()
    before = signal.getsignal(signal.SIGINT)
    callback.on_train_begin(args, state, control)
    callback.on_step_end(args, state, control)
    assert not (control.should_save or control.should_training_stop)
    os.kill(os.getpid(), signal.SIGINT)  # a real signal, handled instead of KeyboardInterrupt
    callback.on_step_end(args, state, control)
    assert control.should_save and control.should_training_stop and callback.interrupted
    callback.on_train_end(args, state, control)
    assert signal.getsignal(signal.SIGINT) is before


def _train_cli(output_root: Path, run_id: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "train", *QUICK, f"run_id={run_id}", f"paths.output_root={output_root}"],
        cwd=PROJECT_ROOT,
        # Not the MLFLOW_TRACKING_URI the in-process run exported: this run's own store.
        env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "HYDRA_FULL_ERROR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _losses(checkpoint: Path) -> list[float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    # The uninterrupted reference, in this process.
    reference = compose_config(*QUICK, tmp=tmp_path / "straight")
    run(reference)
    straight = Path(reference.paths.output_dir) / "checkpoints" / "checkpoint-40"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # exported by that run

    # The same config as a command, terminated once its first checkpoint is on disk.
    output_root = tmp_path / "preempted"
    run_dir = output_root / "train" / "runs" / "nightly"
    process = _train_cli(output_root, "nightly")
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if any(is_complete(p) for p in run_dir.glob("checkpoints/checkpoint-*")):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == EXIT_INTERRUPTED, output[-3000:]
    saved = sorted(run_dir.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    interrupted_at = int(saved[-1].name.split("-")[1])
    assert 5 <= interrupted_at < 40 and is_complete(saved[-1])  # written on the signal, not at the end
    assert "rerun the same command to resume" in output

    # A checkpoint folder cut off mid-write (newest by number) must be passed over.
    half_written = run_dir / "checkpoints" / "checkpoint-999"
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"partial")

    # The rerun (in this process, same run folder): resume=auto continues from the signal's checkpoint.
    rerun = compose_config(*QUICK, "run_id=nightly", tmp=tmp_path)
    with open_dict(rerun):
        rerun.paths.output_root, rerun.paths.output_dir = str(output_root), str(run_dir)
    run(rerun)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(saved[-1])
    resumed = run_dir / "checkpoints" / "checkpoint-40"

    assert _losses(resumed) == pytest.approx(_losses(straight), abs=TOLERANCE)
    assert len(_losses(resumed)) == 40
    weights, expected = load_file(resumed / "model.safetensors"), load_file(straight / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, atol=TOLERANCE, rtol=0)

    # One MLflow run across the interruption, finished after the resume.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output_root}/mlflow.db")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("finetune-phi").experiment_id])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["interrupted_at_step"] == str(interrupted_at)
    assert mlflow_run.data.tags["resumed_from"] == str(saved[-1])
