"""Every profile and preset composes; bad keys and names fail at compose time, named."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from common.paths import PROJECT_ROOT
from train.config import AttnImplementation, OnError, PeftMethod

CONF = PROJECT_ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("profile", options("profile"))
def test_every_profile_composes(compose_train, profile):
    cfg = compose_train(f"+profile={profile}")
    assert cfg.profile == profile
    assert cfg.sft.seed == cfg.seed


@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in ("model", "data", "peft", "sft", "eval", "target", "logger", "paths")
        for o in options(g)
    ],
)
def test_every_preset_composes(compose_train, group, option):
    cfg = compose_train(f"{group}={option}")
    assert cfg[group] is not None


def test_a100_profile_is_the_seed_recipe_with_its_fixes(compose_train):
    cfg = compose_train("+profile=a100")
    assert cfg.model.name_or_path == "microsoft/Phi-3.5-mini-instruct"
    assert cfg.data.split == "train_sft[:1%]" and cfg.data.test_size == 0.2
    sft = cfg.sft
    assert (sft.bf16, sft.learning_rate, sft.lr_scheduler_type, sft.warmup_steps) == (
        True,
        5e-6,
        "cosine",
        0.2,
    )
    assert (sft.num_train_epochs, sft.per_device_train_batch_size, sft.max_length) == (3, 4, 2048)
    assert sft.packing and sft.eval_strategy == "epoch" and sft.seed == 0
    # The memory plan: ~50 GiB without activation checkpointing fits the 80 GB card with room.
    assert not sft.activation_checkpointing
    # bf16 weights with an optimizer whose updates reach them (tests/train/test_precision.py).
    assert (cfg.model.dtype, sft.optim, sft.optim_args) == (
        "bfloat16",
        "adamw_torch_8bit",
        "bf16_stochastic_round=True",
    )
    # The fixes: no eager attention, a pad token that is not a stop token, MLflow on.
    assert cfg.model.attn_implementation == "auto"
    assert cfg.model.pad_token == "<|pad|>"
    assert cfg.logger.log_model and cfg.logger.registered_model_name


def test_24gb_profile_is_qlora_nf4(compose_train):
    cfg = compose_train("+profile=24gb")
    assert cfg.peft.method == "qlora" and cfg.peft.load_in_4bit and cfg.peft.bnb_4bit_quant_type == "nf4"


def test_command_line_group_choice_beats_the_profile(compose_train):
    cfg = compose_train("+profile=a100", "model=phi3_mini_4k")
    assert cfg.model.name_or_path == "microsoft/Phi-3-mini-4k-instruct"


def test_any_sft_field_is_overridable(compose_train):
    cfg = compose_train("sft.neftune_noise_alpha=5", "sft.optim=adamw_torch", "peft=lora", "peft.r=8")
    assert cfg.sft.neftune_noise_alpha == 5 and cfg.sft.optim == "adamw_torch" and cfg.peft.r == 8


@pytest.mark.parametrize("key", ["sft.learning_rat", "model.nmae_or_path", "peft.rank"])
def test_misspelt_key_fails_naming_it(compose_train, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_train(f"{key}=1")
    assert key.split(".")[1] in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["+sft.learning_rat=1"], "has no key 'learning_rat'. Did you mean 'sft.learning_rate'?"),
        (["++sft.learning_rat=1"], "has no key 'learning_rat'"),
        (["+peft.rank=8"], "has no key 'rank'"),
        (["target=azureml", "+target.compute.sise=x"], "has no key 'sise'"),
        (["+estimat=true"], "Did you mean 'estimate'?"),
        (["+hardware.tokens_per_second.lroa=1"], "valid: [full, lora, qlora]"),  # an enum-keyed dict
    ],
)
def test_a_key_added_with_plus_must_be_declared(compose_train, overrides, named):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(*overrides)
    assert named in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+logger.tags.team=nlp"],  # an open dict: what `+` is for
        ["++hardware.tokens_per_second.lora=900"],
        ["++sft.learning_rate=0.1"],
        ["target=azureml", "++target.compute.location=westeurope"],
        ["+profile=a100"],  # a config group, left to Hydra
    ],
)
def test_declared_keys_open_dicts_and_groups_can_still_be_added(compose_train, overrides):
    compose_train(*overrides)


def test_sft_field_from_an_older_trl_is_rejected(compose_train):
    # transformers 5 removed warmup_ratio; the schema follows the installed TRL.
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_train("sft.warmup_ratio=0.1")
    assert "warmup_ratio" in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize(
    "overrides,allowed",
    [
        (["peft.method=lroa"], "[none, lora, qlora, dora]"),
        (["model.attn_implementation=flash"], "eager, sdpa, flash_attention_2"),
        (["model.dtype=bf16"], "[auto, float32, bfloat16, float16]"),
        (["data.format=jsonl"], "[messages, sharegpt, alpaca, prompt_completion]"),
        (["data.on_error=ignore"], "[fail, skip]"),
        (["data.length_policy=cut"], "[truncate, drop]"),
        (["logger.peft_save=both"], "[merged, adapter]"),
        (["target.name=aml"], "[local, azureml]"),
        (["target=azureml", "target.compute.tier=spot"], "[dedicated, low_priority]"),
        (["target=azureml", "target.workspace.credential=cli"], "[default, azure_cli]"),
        (["target=azureml", "target.job_identity=root"], "[user, managed]"),
        (["hardware.tokens_per_second.lroa=100"], "[full, lora, qlora]"),
        # TRL's own choices: its enums (transformers' SchedulerType) and `choices` metadata.
        (["sft.lr_scheduler_type=cosin"], "cosine, cosine_with_restarts"),
        (["sft.packing_strategy=bdf"], "[bfd, bfd_split, wrapped]"),
    ],
)
def test_a_value_outside_a_choice_fails_at_compose_time_naming_key_and_choices(
    compose_train, overrides, allowed
):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(*overrides)
    message = str(err.value) + str(err.value.__cause__)
    assert overrides[-1] in message and allowed in message


def test_choices_are_read_as_their_enum_and_compare_equal_to_the_yaml_spelling(compose_train):
    cfg = compose_train("+profile=24gb", "sft.optim=adamw_torch", "data.on_error=skip")
    assert cfg.peft.method is PeftMethod.qlora and cfg.peft.method == "qlora"
    assert cfg.data.on_error is OnError.skip and f"{cfg.data.on_error}" == "skip"
    assert cfg.sft.optim == "adamw_torch" and isinstance(cfg.sft.optim, enum.Enum)
    # Where a plain string is needed (SFTConfig kwargs, MLflow params), the YAML spelling comes out.
    assert OmegaConf.to_container(cfg.sft, enum_to_str=True)["optim"] == "adamw_torch"


def test_attention_choices_are_implementations_transformers_knows():
    from transformers import AttentionInterface

    import train.model  # noqa: F401  registers varlen_sdpa, as loading a model does

    known = set(AttentionInterface().valid_keys()) | {"eager"}  # eager is the models' own code
    assert {str(a) for a in AttnImplementation} - {"auto"} <= known


def test_wrong_type_fails_at_compose_time(compose_train):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train("sft.num_train_epochs=many")
    assert "num_train_epochs" in str(err.value) + str(err.value.__cause__)


def test_unknown_profile_fails_naming_it_and_the_choices(compose_train):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train("+profile=a1000")
    message = str(err.value)
    assert "a1000" in message and "a100" in message


def test_run_dirs_are_unique_per_invocation(compose_train):
    from hydra.core.hydra_config import HydraConfig

    compose_train()
    run_dir = HydraConfig.get().run.dir
    assert Path(run_dir).parent.name == "runs"
    assert len(Path(run_dir).name.split("-")[-1]) == 6  # microseconds: no two runs share a dir


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ((), "tiny-phi3-sft"),  # the demo's bundled data
        (("data.source=/home/me/my chats.v2.csv",), "tiny-phi3-my-chats-sft"),
        (("+profile=a100",), "phi35-mini-ultrachat_200k-sft"),
        (("+profile=a100", "data.source=azureml:ultrachat-1pct:3"), "phi35-mini-ultrachat-1pct-sft"),
        (("data.source=x.jsonl", "logger.registered_model_name=mine"), "mine"),
    ],
)
def test_registered_name_follows_the_model_and_the_data(compose_train, overrides, name):
    assert compose_train(*overrides).logger.registered_model_name == name
