"""The real command line: `python -m train` in a subprocess, as a user runs it."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from common.paths import PROJECT_ROOT
from tests.conftest import QUICK_TRAIN, run_module
from train.tiny_model import ensure_tiny_phi3

pytestmark = pytest.mark.slow


def train_cli(*overrides, tmp_path, flags=()):
    # Hydra reads the overrides as one run of arguments: flags (--cfg job) go after them.
    return run_module("train", *overrides, f"paths.output_root={tmp_path}/outputs", *flags)


def test_multirun_gives_one_run_dir_and_one_mlflow_run_per_point(tmp_path):
    result = train_cli("-m", "sft.learning_rate=1e-3,3e-3", *QUICK_TRAIN, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert all((sweep / n / "summary.json").exists() for n in ("0", "1"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("finetune-phi").experiment_id])
    points = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the sweep's parent run has none
    assert sorted(r.data.params["sft.learning_rate"] for r in points) == ["0.001", "0.003"]


def test_unknown_profile_is_named_with_the_available_ones(tmp_path):
    result = train_cli("+profile=a1000", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "a1000" in result.stderr and "a100" in result.stderr and "24gb" in result.stderr


JOB = ("--cfg", "job")  # print the composed config


@pytest.mark.parametrize(
    "misspelt,overrides,flags",
    [
        ("sft.learning_rat", ["sft.learning_rat=1"], JOB),
        # Hydra's error for the line above suggests `+sft.learning_rat=1`; `+` and `++` add keys past
        # the schema, which once composed, was priced, and died in SFTConfig(...) 9 s into a run.
        ("sft.learning_rat", ["+sft.learning_rat=1"], JOB),
        ("sft.learning_rat", ["++sft.learning_rat=1"], JOB),
        ("sft.learning_rat", ["+sft.learning_rat=1", "estimate=true"], ()),
        ("sft.learning_rat", ["++sft.learning_rat=1", *QUICK_TRAIN], ()),
        ("model.nmae_or_path", ["+model.nmae_or_path=x"], JOB),
        ("estimat", ["+estimat=true"], JOB),
        ("target.compute.sise", ["target=azureml", "target.dry_run=true", "+target.compute.sise=NC6"], ()),
    ],
)
def test_misspelt_key_fails_before_anything_runs_in_every_form(tmp_path, misspelt, overrides, flags):
    result = train_cli(*overrides, tmp_path=tmp_path, flags=flags)
    assert result.returncode != 0
    assert misspelt in result.stderr
    assert not (tmp_path / "outputs").exists()  # no run folder, nothing tracked


def test_plus_still_adds_to_open_dicts_and_sets_declared_keys(tmp_path):
    result = train_cli("+logger.tags.team=nlp", "++sft.learning_rate=0.1", tmp_path=tmp_path, flags=JOB)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "team: nlp" in result.stdout and "learning_rate: 0.1" in result.stdout


def test_prepare_command_checks_added_keys_too(tmp_path):
    result = run_module("train.prepare", "+data.sourc=chats.jsonl", f"paths.output_root={tmp_path}/outputs")
    assert result.returncode != 0 and "Could not add 'data.sourc'" in result.stderr
    assert "Did you mean 'data.source'?" in result.stderr


def test_prepare_command_names_the_bad_row_and_writes_nothing_trainable(tmp_path):
    src = tmp_path / "chats.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    src.write_text(good + "\n" + '{"messages": [{"role": "robot", "content": "beep"}]}\n', encoding="utf-8")
    out = tmp_path / "prepared"
    result = run_module(
        "train.prepare",
        f"data.source={src}",
        f"data.output_dir={out}",
        f"paths.output_root={tmp_path}/outputs",
        "model.demo_only=false",  # the tiny model's tokenizer is enough to check rows
    )
    assert result.returncode == 2
    # One line, no traceback (through Hydra's error reporting too).
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert f"{src} line 2: messages[0]: unknown role 'robot'" in line
    assert "data.on_error=skip" in line  # says what to do
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert not (out / "train.jsonl").exists()


@pytest.mark.parametrize("module", ["train", "train.prepare"])
def test_own_data_with_the_demo_model_stops_naming_the_presets(tmp_path, module):
    src = tmp_path / "my_chats.jsonl"
    src.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    )
    result = run_module(module, f"data.source={src}", f"paths.output_root={tmp_path}/outputs")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: data.source={src} with the tiny demo model")
    assert "model=smollm2" in line and "+profile=a100" in line and "model.demo_only=false" in line
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_a_hub_model_not_cached_while_offline_stops_at_once(tmp_path):
    result = run_module(
        "train.prepare",
        "+profile=a100",
        f"paths.output_root={tmp_path}/outputs",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "microsoft/Phi-3.5-mini-instruct is not in the local Hugging Face cache" in line
    assert "HF_HUB_OFFLINE" in line and "model.name_or_path=" in line


def test_no_azure_login_is_one_line_saying_az_login(tmp_path):
    """azure-identity's real AzureCliCredential, with no `az` on PATH (no network call is made)."""
    result = run_module(
        "train",
        "+profile=cpu",
        "target=azureml",
        "target.workspace.credential=azure_cli",
        f"paths.output_root={tmp_path}/outputs",
        env={
            "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
            "AZURE_RESOURCE_GROUP": "rg",
            "AZUREML_WORKSPACE_NAME": "ws",
            "PATH": str(Path(sys.executable).parent),
        },
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "experimental class" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "WARNING" in line or line.startswith("error")]
    assert line.startswith("error: no Azure login that works here: run `az login`")


def test_the_csv_example_trains_quietly_and_sft_max_steps_wins_over_the_budget(tmp_path):
    """examples/chats.csv (prompt,completion), as the README trains it: no traceback, no warning
    line, and the command line's sft.max_steps is what trains, not a preset's token_budget."""
    result = train_cli(
        "data.source=examples/chats.csv", "model.demo_only=false", "token_budget=100000", *QUICK_TRAIN,
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if "warn" in line.lower()] == []
    assert "sft.max_steps=2: token_budget 100000 not used" in output
    (summary,) = (tmp_path / "outputs").rglob("summary.json")
    metrics = json.loads(summary.read_text())["metrics"]
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_phi3())
    with open(PROJECT_ROOT / "examples" / "chats.csv", newline="", encoding="utf-8") as f:
        rows = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]
                for r in csv.DictReader(f)]  # fmt: skip
    longest = max(len(tokenizer.apply_chat_template(r, tokenize=True, return_dict=False)) for r in rows)
    batch = 32  # conf/sft/default.yaml's per_device_train_batch_size
    assert 0 < metrics["num_input_tokens_seen"] <= 2 * batch * longest  # 2 steps, not the budget's ~150
