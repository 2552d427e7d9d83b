"""Multi-process training on the CPU (gloo backend).

`torchrun --nproc-per-node 2 -m train`, the CPU default: two processes at batch 8 each must train
like one process at batch 16 (same global batch, same data order): the loss at every step within
a relative 1e-4, every weight within 1e-5 (the gradient all-reduce sums in another order than one
big batch does).

FSDP2 cannot run through SFTTrainer on CPU processes (accelerate 1.15 enables FSDP on GPU-like
devices only): its mechanics run with torch itself (tests/train/fsdp2_worker.py) against DDP, and
a launch that asks accelerate for FSDP, or that `--cpu` collapses to one process, stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig
from safetensors.torch import load_file
from transformers import AutoTokenizer

from common.paths import PROJECT_ROOT
from tests.conftest import compose_config
from train import launch
from train.recipe import run

STEPS = 4
QUICK = [  # the CPU default, shortened; without CUDA sft_args sets use_cpu (gloo)
    "data.max_train_rows=64",
    "data.max_eval_rows=16",
    f"sft.max_steps={STEPS}",
    "sft.logging_steps=1",
    "sft.disable_tqdm=true",
    "eval.generate_samples=0",
    "logger.log_model=false",
]
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-5


def _losses(checkpoint: Path) -> list[float]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture
def fresh_launch_id(monkeypatch):
    for name in ("FINETUNE_PHI_RUN_ID", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    launch.launch_id.cache_clear()
    yield monkeypatch
    launch.launch_id.cache_clear()


def test_run_id_comes_from_the_env_then_the_launcher_then_the_clock(fresh_launch_id):
    clock = launch.launch_id()
    assert clock[:4].isdigit() and launch.launch_id() == clock  # read once per process
    launch.launch_id.cache_clear()
    fresh_launch_id.setenv("WORLD_SIZE", "2")
    fresh_launch_id.setenv("TORCHELASTIC_RUN_ID", "0f3c9a7e-1111-2222-3333-444455556666")
    assert launch.launch_id() == "elastic-0f3c9a7e"
    launch.launch_id.cache_clear()
    fresh_launch_id.setenv("TORCHELASTIC_RUN_ID", "phi35-full-01")  # torchrun --rdzv-id
    assert launch.launch_id() == "phi35-full-01"
    launch.launch_id.cache_clear()
    fresh_launch_id.setenv("FINETUNE_PHI_RUN_ID", "nightly-7")
    assert launch.launch_id() == "nightly-7"


def test_several_nodes_without_a_shared_id_is_an_error(fresh_launch_id):
    fresh_launch_id.setenv("WORLD_SIZE", "16")
    fresh_launch_id.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default on several nodes
    with pytest.raises(launch.LaunchError, match="FINETUNE_PHI_RUN_ID"):
        launch.launch_id()


def test_one_machine_without_an_id_is_named_by_the_launching_process(fresh_launch_id):
    fresh_launch_id.setenv("WORLD_SIZE", "2")
    fresh_launch_id.setenv("LOCAL_WORLD_SIZE", "2")  # accelerate launch: static rendezvous, no id
    name = launch.launch_id()
    assert name.endswith(f"-launcher{os.getppid()}") and name[:4].isdigit()


def test_accelerate_configs_load_and_profiles_point_at_them(compose_train):
    configs = sorted((PROJECT_ROOT / "conf" / "accelerate").glob("*.yaml"))
    kinds = {p.stem: ClusterConfig.from_yaml_file(str(p)).distributed_type.value for p in configs}
    assert kinds == {
        "ddp": "MULTI_GPU",
        "fsdp": "FSDP",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
    }
    for profile in ("a100", "h100", "24gb"):
        assert Path(compose_train(f"+profile={profile}").accelerate_config).is_file()


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    output_root = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FINETUNE_PHI_RUN_ID")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "train",
            *QUICK,
            "sft.per_device_train_batch_size=8",
            f"paths.output_root={output_root}",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    # Both ranks used one run folder, named by the launcher's id, with a log file each.
    (run_dir,) = (output_root / "train" / "runs").iterdir()
    assert run_dir.name.startswith("elastic-")
    assert (run_dir / "train.log").exists() and (run_dir / "train.rank1.log").exists()

    # Only rank 0 logged: one MLflow run, which knows it ran on two processes.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{output_root}/mlflow.db")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("finetune-phi").experiment_id])
    assert mlflow_run.data.tags["world_size"] == "2" and mlflow_run.info.status == "FINISHED"

    single = compose_config(*QUICK, "sft.per_device_train_batch_size=16", tmp=tmp_path / "single")
    run(single)
    one = Path(single.paths.output_dir) / "checkpoints" / f"checkpoint-{STEPS}"
    two = run_dir / "checkpoints" / f"checkpoint-{STEPS}"
    assert len(_losses(two)) == STEPS
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_RTOL)
    expected, weights = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(weights[name], tensor, atol=WEIGHT_ATOL, rtol=0)


def _launch(*command: str, output_root: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FINETUNE_PHI_RUN_ID")}
    return subprocess.run(
        [*command, *QUICK, f"paths.output_root={output_root}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_fsdp_requested_on_cpu_processes_stops_instead_of_training_ddp(tmp_path):
    """The command users launch on GPUs, on a CPU: accelerate would train DDP under an FSDP config."""
    config = str(PROJECT_ROOT / "conf" / "accelerate" / "fsdp.yaml")
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
    result = _launch(*accelerate, "--num_processes", "2", "-m", "train", output_root=tmp_path)
    assert result.returncode != 0
    assert "FSDP was requested but accelerate runs MULTI_CPU, so this would train DDP" in result.stderr
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()  # both ranks: one folder, named by the launcher
    assert "-launcher" in run_dir.name
    assert not list(run_dir.glob("checkpoints/*")) and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_accelerate_launch_cpu_collapsed_to_one_process_stops(tmp_path):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    result = _launch(*accelerate, "-m", "train", output_root=tmp_path)
    assert result.returncode != 0
    assert "accelerate launch --cpu started only this process" in result.stderr


@pytest.mark.slow
def test_fsdp2_shards_trains_like_ddp_and_its_gathered_model_registers(tmp_path):
    """2 gloo processes: FSDP2 as conf/accelerate/fsdp.yaml configures it, against DDP on the same
    per-rank batches; the gathered FULL_STATE_DICT read back and registered as the recipe does."""
    import mlflow

    from train import recipe, tracking

    worker = PROJECT_ROOT / "tests" / "train" / "fsdp2_worker.py"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        str(worker),
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((tmp_path / "fsdp2.json").read_text())

    assert report["world_size"] == 2
    assert report["local_shard_shape"][0] * 2 == report["full_shape"][0]  # each rank holds half a weight
    assert report["fsdp_losses"] == pytest.approx(report["ddp_losses"], rel=LOSS_RTOL)
    assert report["max_weight_diff_vs_ddp"] < WEIGHT_ATOL

    # What the recipe's log_and_register stage does with a sharded run's final_model/.
    cfg = compose_config(*QUICK, "logger.registered_model_name=fsdp2-tiny", tmp=tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        gathered = recipe._read_back(tmp_path / "final_model", cfg)
        # An explicit experiment (an earlier test's mlflow.set_experiment leaves its id active),
        # with its artifacts beside the store rather than in ./mlruns.
        experiment = mlflow.create_experiment("fsdp2", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            version = tracking.log_chat_model(
                gathered, AutoTokenizer.from_pretrained(tmp_path / "final_model"), cfg.logger, False, {}
            )
        registered = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    finally:
        mlflow.set_tracking_uri(None)
    response = registered.predict({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    response = response[0] if isinstance(response, list) else response
    assert (
        response["object"] == "chat.completion" and response["choices"][0]["message"]["role"] == "assistant"
    )


def test_sharded_runs_skip_generation_and_log_the_gathered_model(tmp_path, monkeypatch):
    """FSDP / ZeRO-3 (no GPU here to shard on): the recipe's path for weights no rank holds whole."""
    from mlflow.tracking import MlflowClient

    from train import recipe

    monkeypatch.setattr(recipe, "_weights_sharded", lambda trainer: True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # exported by an earlier in-process run
    cfg = compose_config(*QUICK, "eval.generate_samples=4", "logger.log_model=true", tmp=tmp_path)
    metrics = run(cfg)
    assert "exact_match_after" not in metrics  # generation would need every rank
    assert (Path(cfg.paths.output_dir) / "final_model" / "model.safetensors").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    (version,) = client.search_model_versions(f"name='{cfg.logger.registered_model_name}'")
    assert float(version.tags["eval_loss"]) == pytest.approx(metrics["eval_loss"], rel=1e-4)
