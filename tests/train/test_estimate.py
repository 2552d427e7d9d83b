"""`estimate=true`: sizes, tokens, time and cost of a config without loading any weights."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import torch
import transformers

from tests.conftest import run_module
from train import data
from train.estimate import build_estimate, estimate
from train.model import ConfigError, load_model, load_tokenizer

# Phi-3-mini and Phi-3.5-mini (train/architectures/): vocab 32064, hidden 3072, 32 layers, MLP 8192.
# Embedding and output head 2 x 32064*3072 = 197,001,216; per layer qkv 3072*9216 + o 3072*3072
# + gate_up 3072*16384 + down 8192*3072 + 2 norms 3072 = 113,252,352, x 32 = 3,624,075,264;
# final norm 3072. Total 3,821,079,552, of which decoder linears 3,624,075,264 - 32*6144 = 3,623,878,656.
PHI3_MINI_PARAMS = 3_821_079_552
# LoRA r=16 on every decoder linear: r x (in + out) per projection,
# 32 x 16 x ((3072+9216) + (3072+3072) + (3072+16384) + (8192+3072)) = 25,165,824;
# DoRA adds a magnitude per output feature: 32 x (9216 + 3072 + 16384 + 3072) = 1,015,808 more.
PHI3_MINI_LORA_R16 = 25_165_824
PHI3_MINI_DORA_R16 = 26_181_632


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything loads pretrained weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("the estimate loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)


@pytest.fixture
def offline(monkeypatch):
    """No hub traffic: the libraries read HF_HUB_OFFLINE once, at import, so patch what they read."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def test_the_cpu_default_is_estimated_on_this_machine(compose_train, tmp_path, no_weights, capsys):
    """No GPU is named, and no tokens/s, time or cost is made up for a machine never measured."""
    cfg = compose_train("estimate=true", tmp=tmp_path)
    est = estimate(cfg)
    printed = capsys.readouterr().out
    assert f"{est.params:,}" in printed and "Standard_NC" not in printed
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if not torch.cuda.is_available():
        assert est.machine == f"this machine ({os.cpu_count()} CPU cores, no GPU; memory: its RAM)"
        assert est.memory_gib == pytest.approx(ram)
    assert est.tokens_per_second is None and est.hours is None and est.usd is None
    assert "throughput     not known for this machine (full): measure it (python -m bench.train)" in printed
    assert "training  " not in printed and "$" not in printed

    # The tokens are those the preparation counts for training, not an approximation.
    tokenizer = load_tokenizer(cfg.model)
    prepared = data.prepare_for(cfg, tokenizer)
    assert est.train_tokens == prepared.stats["tokens"]["train"]


def test_throughput_measured_for_a_3_8b_model_is_not_scaled_to_a_tiny_one(compose_train, tmp_path):
    est = build_estimate(compose_train("hardware=nc24ads_a100_v4", tmp=tmp_path))
    assert est.machine == "Standard_NC24ads_A100_v4"
    assert est.tokens_per_second is None and est.hours is None and est.usd is None
    assert "does not scale to" in est.throughput_note


@pytest.mark.slow
def test_an_estimate_leaves_no_run_folder(tmp_path):
    result = run_module("train", "estimate=true", f"paths.output_root={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "this machine" in result.stdout
    assert list(tmp_path.iterdir()) == []  # Hydra's run folder (its .hydra record and log) is gone


def test_tiny_model_parameter_count_is_exact(compose_train, tmp_path):
    cfg = compose_train(tmp=tmp_path)
    real = load_model(cfg.model, cfg.peft, load_tokenizer(cfg.model))
    assert build_estimate(cfg).params == sum(p.numel() for p in real.parameters())


def test_phi35_mini_full_fine_tune_on_the_a100_profile(compose_train, tmp_path, no_weights, offline):
    est = build_estimate(compose_train("+profile=a100", tmp=tmp_path))
    assert est.params == est.trainable_params == PHI3_MINI_PARAMS
    assert est.weights_gib == pytest.approx(7.1173, abs=1e-4)  # 3,821,079,552 x 2 bytes (bf16) / 2**30
    assert est.gradients_gib == pytest.approx(7.1173, abs=1e-4)  # one bf16 gradient per weight
    assert est.optimizer_gib == pytest.approx(7.1173, abs=1e-4)  # AdamW8bit: two 8-bit moments, 2 bytes
    assert est.fits and est.total_gib < est.memory_gib == 80
    # The hub data cannot be read offline: said so, and a million tokens is priced instead.
    assert est.train_tokens is None and "unavailable" in est.tokens_note
    # conf/hardware/nc24ads_a100_v4.yaml: 5400 tokens/s for 3.82e9 parameters, $3.673/h;
    # 5400 x 3.82e9 / 3,821,079,552 = 5398.47 tokens/s; 3.673 / 3600 / 5398.47 x 1e6 = $0.18899.
    assert est.tokens_per_second == pytest.approx(5398.47, abs=0.01)
    assert est.usd_per_million_tokens == pytest.approx(0.18899, abs=1e-5)


def test_adapters_are_counted_as_peft_adds_them(compose_train, tmp_path, no_weights, offline):
    lora = build_estimate(compose_train("+profile=a100", "peft=lora", tmp=tmp_path))
    dora = build_estimate(compose_train("+profile=a100", "peft=dora", tmp=tmp_path))
    qlora = build_estimate(compose_train("+profile=24gb", tmp=tmp_path))
    assert lora.trainable_params == qlora.trainable_params == PHI3_MINI_LORA_R16
    assert dora.trainable_params == PHI3_MINI_DORA_R16
    assert lora.params == PHI3_MINI_PARAMS  # the base model's count, adapters apart


def test_lora_and_qlora_need_far_less_memory(compose_train, tmp_path, no_weights, offline):
    full = build_estimate(compose_train("+profile=a100", tmp=tmp_path))
    lora = build_estimate(compose_train("+profile=a100", "peft=lora", tmp=tmp_path))
    qlora = build_estimate(compose_train("+profile=24gb", tmp=tmp_path))
    # bf16 base plus float32 adapters: (3,821,079,552 x 2 + 25,165,824 x 4) / 2**30
    assert lora.weights_gib == pytest.approx(7.2111, abs=1e-4)
    # NF4 decoder linears at 0.5 byte + 0.127/8 for double-quantised constants, the other
    # 197,200,896 weights in bf16, the adapters in float32:
    # (3,623,878,656 x 0.515875 + 197,200,896 x 2 + 25,165,824 x 4) / 2**30
    assert qlora.weights_gib == pytest.approx(2.2021, abs=1e-4)
    assert full.total_gib > lora.total_gib > qlora.total_gib
    assert qlora.machine == "RTX 4090 24 GB" and qlora.fits and qlora.usd is None


def test_memory_plan_activations(compose_train, tmp_path, no_weights, offline):
    """Phi-3-mini at 4 x 2048 = 8,192 tokens a micro-batch, bf16 (2 bytes). Per token per layer
    6h + 2kv + 4i = 6*3072 + 2*3072 + 4*8192 = 57,344 values; TRL's fused LM head holds one tile of
    4096 tokens x 32,064 vocab and its gradient, 2 x 4096 x 32064 x 2 bytes = 0.4893 GiB."""
    per_layer, head = 8192 * 57344 * 2 / 2**30, 2 * 4096 * 32064 * 2 / 2**30
    inputs = 8192 * 3072 * 2 / 2**30  # what a checkpointed layer keeps: its input
    plans = {
        "sft.activation_checkpointing=false": 32 * per_layer + head,  # 28.49 GiB: the GPU profiles
        "sft.activation_checkpointing=true": 32 * inputs
        + 2 * per_layer
        + head,  # one layer recomputed at a time
        "sft.activation_checkpointing_kwargs.every_n_layers=2": 16 * per_layer
        + 16 * inputs
        + 2 * per_layer
        + head,
        "sft.activation_checkpointing_kwargs.offload=true": 2 * per_layer + head,  # inputs in host memory
    }
    for override, activations in plans.items():
        on = [] if "=false" in override else ["sft.activation_checkpointing=true"]
        est = build_estimate(
            compose_train("+profile=h200", "model=phi3_mini_4k", *on, override, tmp=tmp_path)
        )
        assert est.tokens_per_micro_batch == 8192
        assert est.activations_gib == pytest.approx(activations, abs=1e-4), override
    assert build_estimate(compose_train("+profile=h200", tmp=tmp_path)).total_gib < 0.75 * 139.8
    qlora = build_estimate(compose_train("+profile=24gb", tmp=tmp_path))
    assert (qlora.checkpointed_layers, qlora.layers) == (16, 32) and qlora.total_gib < 0.75 * 24


def test_a_full_fine_tune_does_not_fit_a_24gb_card(compose_train, tmp_path, no_weights, offline):
    est = build_estimate(compose_train("+profile=24gb", "peft=none", tmp=tmp_path))
    assert not est.fits and est.total_gib > 24


def test_an_unknown_hub_model_asks_for_a_local_config(compose_train, tmp_path, offline):
    cfg = compose_train("model.name_or_path=someone/unknown-model", tmp=tmp_path)
    with pytest.raises(ConfigError, match="config.json"):
        build_estimate(cfg)


@pytest.mark.slow
def test_cli_prints_the_estimate_for_a_profile(tmp_path):
    result = run_module(
        "train",
        "+profile=24gb",
        "estimate=true",
        f"paths.output_root={tmp_path}",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3,821,079,552" in result.stdout and "GiB of 24 GiB: fits" in result.stdout
    assert "activation checkpointing on 16 of 32 layers" in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing tracked, trained or left behind


def test_dpo_counts_its_reference_and_both_sequences(compose_train, tmp_path, no_weights, offline):
    sft = build_estimate(compose_train("+profile=a100", tmp=tmp_path))
    full = build_estimate(compose_train("+profile=a100", "method=dpo", tmp=tmp_path))
    precomputed = build_estimate(
        compose_train("+profile=a100", "method=dpo", "dpo.precompute_ref_log_probs=true", tmp=tmp_path)
    )
    lora = build_estimate(compose_train("+profile=a100", "method=dpo", "peft=lora", tmp=tmp_path))
    assert full.reference_gib == pytest.approx(full.weights_gib)  # a second bf16 copy of the weights
    assert precomputed.reference_gib == 0 and lora.reference_gib == 0  # scored once / adapter switched off
    assert full.tokens_per_micro_batch == 2 * sft.tokens_per_micro_batch  # chosen and rejected
    assert full.activations_gib > 1.9 * sft.activations_gib
    assert full.total_gib - precomputed.total_gib == pytest.approx(full.weights_gib)


def test_from_the_data_the_micro_batch_is_sized_by_the_longest_row(
    compose_train, tmp_path, no_weights, capsys
):
    """sft.max_length=null: the memory is sized for the longest prepared row, as training takes it."""
    cfg = compose_train("estimate=true", "sft.max_length=null", tmp=tmp_path)
    est = estimate(cfg)
    prepared = data.prepare_for(cfg, load_tokenizer(cfg.model))
    longest = max(
        len(ids)
        for split in ("train", "test")
        for ids in pq.read_table(prepared.dir / f"{split}.tokens.parquet")["input_ids"].to_pylist()
    )
    assert est.max_length == longest
    assert est.tokens_per_micro_batch == cfg.sft.per_device_train_batch_size * longest
    assert f"{cfg.sft.per_device_train_batch_size} x {longest} (from the data: the longest kept row)" in (
        capsys.readouterr().out
    )
