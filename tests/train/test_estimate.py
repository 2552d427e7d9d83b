"""`estimate=true`: sizes, tokens, time and cost of a config without loading any weights."""

from __future__ import annotations

import pytest
import transformers

from tests.conftest import run_module
from train import data
from train.estimate import GIB, build_estimate, estimate
from train.model import ConfigError, load_model, load_tokenizer

PHI3_MINI_PARAMS = 3_821_079_552  # Phi-3-mini and Phi-3.5-mini: same architecture sizes


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


def test_tiny_model_counts_match_the_real_model(compose_train, tmp_path, no_weights, capsys):
    cfg = compose_train("estimate=true", tmp=tmp_path)
    est = estimate(cfg)
    printed = capsys.readouterr().out
    assert f"{est.params:,}" in printed and "Standard_NC24ads_A100_v4" in printed
    assert (tmp_path / "outputs" / "run" / "estimate.json").exists()

    tokenizer = load_tokenizer(cfg.model)
    prepared = data.prepare_for(cfg, tokenizer)
    assert est.train_tokens == prepared.stats["tokens"]["train"]
    assert est.total_tokens == round(est.train_tokens * cfg.sft.num_train_epochs)
    assert est.usd == pytest.approx(est.hours * cfg.hardware.usd_per_hour)


def test_tiny_model_parameter_count_is_exact(compose_train, tmp_path):
    cfg = compose_train(tmp=tmp_path)
    real = load_model(cfg.model, cfg.peft, load_tokenizer(cfg.model))
    assert build_estimate(cfg).params == sum(p.numel() for p in real.parameters())


def test_phi35_mini_full_fine_tune_on_the_a100_profile(compose_train, tmp_path, no_weights, offline):
    est = build_estimate(compose_train("+profile=a100", tmp=tmp_path))
    assert est.params == est.trainable_params == PHI3_MINI_PARAMS
    assert est.weights_gib == pytest.approx(PHI3_MINI_PARAMS * 2 / GIB)  # bf16
    assert est.gradients_gib == pytest.approx(est.weights_gib)
    assert est.optimizer_gib == pytest.approx(2 * est.weights_gib)  # AdamW: two moments
    assert est.fits and est.total_gib < est.gpu_memory_gib == 80
    # The hub data cannot be read offline: said so, and a million tokens is priced instead.
    assert est.train_tokens is None and "unavailable" in est.tokens_note
    tokens_per_second = 4100 * 3.82e9 / PHI3_MINI_PARAMS  # conf/hardware/nc24ads_a100_v4.yaml, scaled
    assert est.tokens_per_second == pytest.approx(tokens_per_second)
    assert est.usd_per_million_tokens == pytest.approx(3.673 / 3600 / tokens_per_second * 1e6)


def test_lora_and_qlora_need_far_less_memory(compose_train, tmp_path, no_weights, offline):
    full = build_estimate(compose_train("+profile=a100", tmp=tmp_path))
    lora = build_estimate(compose_train("+profile=a100", "peft=lora", tmp=tmp_path))
    qlora = build_estimate(compose_train("+profile=24gb", tmp=tmp_path))
    # r=16 on every decoder linear of 32 layers: r x (in + out) per layer and projection.
    per_layer = 16 * ((3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072))
    assert lora.trainable_params == qlora.trainable_params == 32 * per_layer
    assert qlora.weights_gib < 0.4 * full.weights_gib < 0.4 * lora.weights_gib  # 4-bit base
    assert full.total_gib > lora.total_gib > qlora.total_gib
    assert qlora.gpu == "RTX 4090 24 GB" and qlora.fits and qlora.usd is None


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
    assert not (tmp_path / "mlflow.db").exists()  # nothing tracked, nothing trained
