"""The training benchmark: its config, FLOPs/MFU arithmetic, and a 2-step run on the tiny model.

No timing is asserted: tokens/s on a shared CI machine is noise. What is asserted is what the
numbers are made of (real-token counts, which settings each variant ran with, the files).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from bench import metrics
from bench.config import register_bench_configs
from bench.report import write_results
from common.paths import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
register_bench_configs()


@pytest.fixture
def compose_bench(tmp_path):
    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("bench", overrides=["run_id=test", *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_root = str(tmp_path / "outputs")
            cfg.paths.output_dir = str(tmp_path / "outputs" / "run")
            cfg.bench.results_dir = str(tmp_path / "results")
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


def _defaults(name: str) -> list:
    entries = yaml.safe_load((CONF / name).read_text())["defaults"]
    return [e for e in entries if not (isinstance(e, str) and e.endswith("_schema"))]


def test_bench_config_composes_the_same_groups_as_training():
    # bench.yaml repeats train.yaml's defaults list (Hydra cannot extend a typed primary
    # config); when training gains a group, this says so instead of profiles failing later.
    assert _defaults("bench.yaml") == _defaults("train.yaml")


def test_misspelt_bench_key_fails_at_compose_time(compose_bench):
    with pytest.raises(Exception, match="stpes"):
        compose_bench("bench.stpes=3")


def test_peak_table_and_mfu():
    def peak(name, override=None):
        return metrics.peak_tflops(name, override)[0]

    assert peak("NVIDIA H100 80GB HBM3") == peak("NVIDIA H200") == 989.0  # SXM
    assert peak("NVIDIA H100 NVL") == peak("NVIDIA H200 NVL") == 835.0  # Azure NC40ads_H100_v5: NVL
    assert peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA A100-SXM4-80GB") == peak("NVIDIA A100 80GB PCIe") == 312.0
    assert peak("NVIDIA GeForce RTX 4090") == 165.2  # bf16 with float32 accumulation
    assert peak("NVIDIA L4") == 121.0
    assert metrics.peak_tflops("NVIDIA H200 NVL") == (835.0, "bench/metrics.py table: 'H200 NVL'")
    assert metrics.peak_tflops("NVIDIA GH200 480GB")[1] == "bench/metrics.py table: 'GH200'"
    assert (
        peak("Some Future GPU") is None and "bench.peak_tflops" in metrics.peak_tflops("Some Future GPU")[1]
    )
    assert metrics.peak_tflops(None) == (None, "no GPU")
    assert metrics.peak_tflops("NVIDIA H100 80GB HBM3", override=500) == (500.0, "bench.peak_tflops")
    # The anchor: 24.75 GFLOP/token at 100% of 989 TFLOP/s is ~40k tokens/s.
    assert metrics.mfu(40_000, 24.75e9, 989.0) == pytest.approx(1.0, rel=0.002)
    assert metrics.mfu(40_000, 24.75e9, None) is None


def test_flops_formula_full_and_adapters():
    full = {"total": 110, "non_embedding": 100, "trainable": 110}
    lora = {"total": 115, "non_embedding": 105, "trainable": 5}
    assert metrics.train_flops_per_token(full, layers=2, hidden=4, seq_len=8) == 6 * 100 + 12 * 2 * 4 * 8
    assert (
        metrics.train_flops_per_token(lora, layers=2, hidden=4, seq_len=8) == 4 * 105 + 2 * 5 + 12 * 2 * 4 * 8
    )


def test_dry_run_builds_phi3_mini_on_meta_and_plans_knobs(compose_bench, capsys):
    from bench.throughput import run_benchmark

    cfg = compose_bench(
        "+profile=h100",
        "model=phi3_mini_4k",
        "bench.weights=random",
        "bench.data=synthetic",
        "bench.dry_run=true",
        "bench.ablations=[fa2,liger,compile]",
    )
    results = run_benchmark(cfg)
    rows = {r["name"]: r for r in results["variants"]}
    assert list(rows) == ["recipe", "seed recipe", "+fa2", "+liger", "+compile"]
    # Phi-3-mini at 2048: 6N' + 12*L*d*T = ~24.75 GFLOP per token (the issue's figure).
    assert rows["recipe"]["flops_per_token"] == pytest.approx(24.75e9, rel=0.005)
    assert rows["recipe"]["seq_len"] == 2048
    assert rows["recipe"]["params"]["total"] == pytest.approx(3.82e9, rel=0.01)
    assert rows["recipe"]["estimated_peak_gib"] == pytest.approx(49.8, abs=0.1)  # the h100 profile's plan
    assert rows["+fa2"]["status"] == "needs a CUDA GPU"
    if not torch.cuda.is_available():  # a 3.8B full fine-tune on this machine: never "would run"
        assert rows["recipe"]["status"].startswith(("would not fit here", "too slow here")), rows["recipe"]
        if importlib.util.find_spec("liger_kernel"):
            assert rows["+liger"]["status"] == rows["recipe"]["status"]
    if not importlib.util.find_spec("liger_kernel"):
        assert rows["+liger"]["status"] == "liger_kernel not installed"
    out = capsys.readouterr().out
    assert "at the sequence length T of each variant" in out and "| at sequence length |" in out
    assert not Path(cfg.bench.results_dir).exists()  # a dry run writes nothing
    assert not Path(cfg.paths.output_dir).exists()  # and leaves no run folder


def test_dry_run_of_the_tiny_default_would_run_here(compose_bench):
    from bench.throughput import run_benchmark

    (recipe, seed) = run_benchmark(compose_bench("bench.dry_run=true"))["variants"]
    assert recipe["status"].startswith("would run") and recipe["seq_len"] == 128


def test_unknown_knob_and_bad_override_are_named(compose_bench):
    from bench.throughput import BenchError, plan_variants

    with pytest.raises(BenchError, match="unknown knob.*nope"):
        plan_variants(compose_bench("bench.ablations=[nope]"), on_cuda=False)
    cfg = compose_bench("+bench.knobs.typo={overrides:['sft.learning_rat=1']}", "bench.ablations=[typo]")
    with pytest.raises(BenchError, match="bench.knobs.typo.overrides.*learning_rat"):
        plan_variants(cfg, on_cuda=False)


def test_random_weights_need_a_known_architecture(compose_bench):
    from bench.throughput import BenchError, architecture_file

    assert architecture_file("phi35-mini").exists()
    with pytest.raises(BenchError, match="no architecture for model.short_name='llama'.*phi3-mini-4k"):
        architecture_file("llama")


def test_synthetic_data_lengths_and_ids(compose_bench):
    from bench.throughput import synthetic_dataset
    from train import model as train_model
    from train.tiny_model import MODEL_SHAPE

    cfg = compose_bench("bench.data=synthetic", "bench.synthetic_mean_tokens=40")
    tokenizer = train_model.load_tokenizer(cfg.model)
    rows = MODEL_SHAPE["vocab_size"]  # the tiny model's embedding rows
    ds = synthetic_dataset(cfg, rows, tokenizer, 300)
    lengths = [len(ids) for ids in ds["input_ids"]]
    assert min(lengths) >= 8 and max(lengths) <= cfg.sft.max_length
    assert 30 < sum(lengths) / len(lengths) < 50
    ids = {i for row in ds["input_ids"] for i in row}
    assert tokenizer.pad_token_id not in ids and tokenizer.eos_token_id not in ids and max(ids) < rows


def test_results_are_never_overwritten(tmp_path):
    first = write_results({"a": 1}, "table", tmp_path, "cpu-2c-x")
    second = write_results({"a": 2}, "table", tmp_path, "cpu-2c-x")
    assert first != second and second.name.endswith("-cpu-2c-x-2.json")
    assert json.loads(first.read_text()) == {"a": 1}
    assert second.with_suffix(".md").read_text() == "table\n"


def _without_mlflow(root: Path) -> str:
    """A PYTHONPATH on which `import mlflow` fails, as on the GPU box (which has no mlflow)."""
    blocker = root / "no-mlflow"
    (blocker / "mlflow").mkdir(parents=True)
    (blocker / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow is not on the GPU box')\n")
    return os.pathsep.join(filter(None, [str(blocker), str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))


def test_the_benchmark_imports_without_mlflow(tmp_path):
    code = "import bench.train, bench.throughput, bench.metrics, bench.report"
    env = {**os.environ, "PYTHONPATH": _without_mlflow(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check = subprocess.run([sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True)
    assert "mlflow is not on the GPU box" in check.stderr  # the blocker blocks


def test_a_time_budget_too_short_for_the_recipe_is_refused(compose_bench):
    from bench.throughput import BenchError, run_benchmark

    with pytest.raises(BenchError, match="bench.time_budget_s=1 leaves no time for the recipe"):
        run_benchmark(compose_bench("bench.time_budget_s=1", "sft.max_length=64"))


def test_tiny_model_against_the_seed_recipe_writes_json_and_table(
    compose_bench, capsys, tmp_path, monkeypatch
):
    """Three steps each of the recipe, the seed recipe and two ablations, each in a process of its
    own without mlflow (as on the GPU box); a skipped knob and a broken one."""
    from bench.throughput import run_benchmark

    monkeypatch.setenv("PYTHONPATH", _without_mlflow(tmp_path))  # the variants' own processes
    cfg = compose_bench(
        "bench.steps=2",
        "bench.untimed_steps=1",
        "+bench.knobs.broken={overrides:['model.name_or_path=/no/such/model']}",
        "bench.ablations=[padded,selective_checkpointing,fa2,broken]",
        "sft.max_length=64",
    )
    results = run_benchmark(cfg)

    path = Path(results["json_path"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-cpu-2c-.*\.json|\d{4}-\d\d-\d\d-[a-z0-9-]+\.json", path.name)
    saved = json.loads(path.read_text())
    rows = {r["name"]: r for r in saved["variants"]}
    assert list(rows) == ["recipe", "seed recipe", "+padded", "+selective_checkpointing", "+fa2", "+broken"]
    assert [r["status"] for r in rows.values()] == ["ok", "ok", "ok", "ok", "skipped", "failed"]
    assert rows["+fa2"]["reason"] == "needs a CUDA GPU"
    assert "/no/such/model" in rows["+broken"]["reason"]  # a knob that breaks is a row, not a crash
    pids = {r["pid"] for r in rows.values() if r["status"] == "ok"}
    assert len(pids) == 4 and os.getpid() not in pids and saved["isolated"]  # one process per variant
    # transformers' every_n_layers (conf/bench.yaml's knob) reached the model: 1 of the 2 layers.
    assert rows["+selective_checkpointing"]["checkpointed_layers"] == "1/2"
    assert (rows["recipe"]["checkpointed_layers"], rows["seed recipe"]["checkpointed_layers"]) == (
        "0/2",
        "2/2",
    )

    seed = rows["seed recipe"]
    assert (seed["attn_implementation"], seed["per_device_batch"], seed["packing"]) == ("eager", 4, "wrapped")
    assert seed["gradient_checkpointing"] and seed["optim"] == "adamw_torch"
    # Fixed-length packing fills every row: 4 rows x 64 real tokens per step, no padding.
    assert seed["tokens_per_step"] == 4 * 64
    assert seed["x_seed"] == pytest.approx(1.0)
    # One conversation per row, padded: fewer real tokens than batch x length.
    padded = rows["+padded"]
    assert padded["packing"] == "padded" and not padded["padding_free"]
    assert 0 < padded["tokens_per_step"] < cfg.sft.per_device_train_batch_size * 64
    for row in (rows["recipe"], seed, padded):
        assert row["timed_steps"] == 2 and row["tokens_per_s"] > 0 and row["peak_rss_gib"] > 0
        assert row["x_recipe"] == pytest.approx(row["tokens_per_s"] / rows["recipe"]["tokens_per_s"])
        assert row["mfu"] is None  # no peak table for CPUs
        assert row["estimated_peak_gib"] > 0
    assert saved["versions"]["trl"] and saved["hardware"]["device"] == "cpu"
    assert saved["peak_source"] == "no GPU"

    table = path.with_suffix(".md").read_text()
    assert "| variant | tokens/s | x seed |" in table
    assert "| +fa2 |" in table and "skipped: needs a CUDA GPU" in table
    assert "| variant |" in capsys.readouterr().out


def test_random_weights_and_synthetic_data_path(compose_bench, monkeypatch, tmp_path):
    """The path the Phi-3 architectures take on a GPU, on the tiny architecture: built from
    a config file with random weights, trained on pre-tokenized random ids."""
    import shutil

    from bench import throughput
    from train.tiny_model import ensure_tiny_phi3

    architectures = tmp_path / "architectures"
    architectures.mkdir()
    cfg = compose_bench(
        "bench.weights=random",
        "bench.data=synthetic",
        "bench.isolate=false",  # in this process: the patched ARCHITECTURES_DIR below holds
        "bench.baseline=false",
        "bench.steps=2",
        "bench.untimed_steps=1",
        "bench.synthetic_mean_tokens=32",
        "sft.max_length=64",
        "sft.per_device_train_batch_size=4",
    )
    shutil.copy(Path(ensure_tiny_phi3(cfg.paths.cache_dir)) / "config.json", architectures / "tiny-phi3.json")
    monkeypatch.setattr(throughput, "ARCHITECTURES_DIR", architectures)

    (row,) = throughput.run_benchmark(cfg)["variants"]
    assert row["status"] == "ok" and row["tokens_per_s"] > 0
    # Padded rows of random length (mean 32, at most 64): real tokens only, under 4 x 64.
    assert 4 * 8 <= row["tokens_per_step"] < 4 * 64
    assert row["params"]["total"] == sum(p.numel() for p in _tiny_model(cfg).parameters())


def _tiny_model(cfg):
    from train import model as train_model

    return train_model.load_model(cfg.model, cfg.peft, train_model.load_tokenizer(cfg.model))


def test_a_length_from_the_data_is_refused_naming_the_key(compose_bench):
    """sft.max_length=null (model=smollm2's preset): the benchmark times a fixed length and says so."""
    from bench.throughput import BenchError, run_benchmark

    with pytest.raises(BenchError, match=r"sft.max_length=<tokens>"):
        run_benchmark(compose_bench("sft.max_length=null"))
