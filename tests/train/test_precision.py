"""The GPU profiles' precision settings train: the optimizer's updates reach the weights.

Each GPU profile's own precision keys (`model.dtype`, `sft.bf16`, `sft.optim`, `sft.optim_args`)
and learning rate (5e-6 for the full fine-tunes) train a small Phi-3 (hidden 128, 2 layers, init
std 0.02 like Phi-3's weights) for 5 steps through the recipe's `load_model`, `sft_args` and
TRL's SFTTrainer on this CPU; the reference is the same run in float32 with torch's AdamW.
torchao's AdamW8bit (what `optim=adamw_torch_8bit` builds) runs here, but it compiles its
per-parameter step with torch.compile once per parameter shape, about 20 s a shape for this
2-core CPU: the test runs that step eagerly (torch.compile hands it back as it is), the same
arithmetic unfused.

The criterion is not the issue's "90% of the weights change in 5 steps". The profiles round
stochastically: a bf16 weight moves by one spacing (|w| x 2^-8) with probability
update / spacing, so at lr 5e-6 about a third of the weights move in 5 steps (28% measured on a
4-layer model), while the expected update is the float32 one. Only float32 master weights would
change 90%, at 16 bytes a parameter (57 GiB for Phi-3-mini before activations, over the 36 GiB
target). What must hold is what lost updates break:
- the update projected on the float32 run's (<dW, dW_fp32> / |dW_fp32|^2 over the trained
  decoder weights) is at least 0.9: measured 0.997 (24gb: 0.999); pure bf16 with torch's AdamW,
  the profiles' settings before, 0.08 (the control test);
- the float32 loss of the trained weights differs from the float32 run's by at most 10% of that
  run's loss drop: measured 0.8% (24gb: 1.9%); pure bf16 loses 97% of the drop.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from omegaconf import open_dict
from transformers import AutoTokenizer, GenerationConfig, Phi3Config, Phi3ForCausalLM
from trl import SFTTrainer

from tests.conftest import compose_config
from train.model import load_model, load_tokenizer, lora_config
from train.sft import sft_args
from train.tiny_model import ensure_tiny_phi3

STEPS = 5
MIN_PROJECTION, MAX_LOSS_GAP = 0.9, 0.10  # of the float32 run's update and loss drop
FLOAT32 = {"model.dtype": "float32", "sft.bf16": False, "sft.optim": "adamw_torch", "sft.optim_args": None}
PURE_BF16 = FLOAT32 | {"model.dtype": "bfloat16", "sft.bf16": True}  # the profiles before issue 13


def precision_of(profile: str) -> dict:
    """The profile's precision keys and learning rate, as composed."""
    cfg = compose_config(f"+profile={profile}")
    return {
        "model.dtype": str(cfg.model.dtype),
        "sft.bf16": cfg.sft.bf16,
        "sft.optim": str(cfg.sft.optim),
        "sft.optim_args": cfg.sft.optim_args,
        "sft.learning_rate": cfg.sft.learning_rate,
        "peft": str(cfg.peft.method),
    }


@pytest.fixture(scope="module")
def train_small_phi3(tmp_path_factory):
    """train(precision) -> (update of the trained decoder weights, float32 loss after, before)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", lambda fn, **options: fn)  # torchao's step uncompiled (see above)
        yield _trainer_of_small_phi3(tmp_path_factory)


def _trainer_of_small_phi3(tmp_path_factory):
    tiny = ensure_tiny_phi3()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        initializer_range=0.02,  # Phi-3's
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("small-phi3")
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig.from_pretrained(tiny)  # stops at <|end|> as Phi-3.5 does
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    specials = set(tokenizer.all_special_ids)
    vocabulary = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
    # Random rows the model can only learn by heart: the loss is taken on the first batch of them.
    ids = vocabulary[
        torch.randint(len(vocabulary), (4 * STEPS, 32), generator=torch.Generator().manual_seed(1))
    ]
    rows, first_batch = ids.tolist(), ids[:4]

    def float32_loss(state_dict) -> float:
        model = Phi3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        model.load_state_dict({k: v.float() for k, v in state_dict.items()})
        with torch.no_grad():
            return model(input_ids=first_batch, labels=first_batch).loss.item()

    runs = {}  # the float32 reference and profiles with the same settings run once

    def train(precision: dict) -> tuple[torch.Tensor, float, float]:
        key = tuple(sorted(precision.items()))
        if key in runs:
            return runs[key]
        lora = precision.get("peft", "none") != "none"
        overrides = [f"{k}={_override_value(v)}" for k, v in precision.items() if k != "peft"]
        cfg = compose_config(
            f"model.name_or_path={model_dir}",
            *overrides,
            *(["peft=lora", "peft.lora_dropout=0"] if lora else []),
            "sft.lr_scheduler_type=constant",  # no warm-up: all 5 steps at the profile's rate
            "sft.warmup_steps=0",
            f"sft.max_steps={STEPS}",
            "sft.per_device_train_batch_size=4",
            "sft.max_length=32",
            "sft.packing=false",
            "sft.assistant_only_loss=false",  # pre-tokenized rows, no chat template
            "sft.activation_checkpointing=false",
            "sft.eval_strategy=no",
            "sft.save_strategy=no",
            "sft.disable_tqdm=true",
            "sft.use_cpu=true",
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path_factory.mktemp("run"))
        tokenizer = load_tokenizer(cfg.model)
        trainer = SFTTrainer(
            model=load_model(cfg.model, cfg.peft, tokenizer),
            args=sft_args(cfg),
            train_dataset=Dataset.from_dict({"input_ids": rows}),
            processing_class=tokenizer,
            peft_config=lora_config(cfg.peft),
        )
        trained = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad and ".layers." in n}
        if lora and cfg.model.dtype == "bfloat16":
            # What TRL does to the adapters of a 4-bit base (sft_trainer.py, "When using QLoRA"):
            # the 24gb profile trains bf16 adapters. The 4-bit base itself needs CUDA (bitsandbytes).
            for param in trained.values():
                param.data = param.data.to(torch.bfloat16)
        before = {n: p.detach().float().clone() for n, p in trained.items()}
        trainer.train()
        update = torch.cat([(p.detach().float() - before[n]).flatten() for n, p in trained.items()])
        final = trainer.model.merge_and_unload() if lora else trainer.model
        initial = Phi3ForCausalLM.from_pretrained(model_dir).state_dict()
        runs[key] = update, float32_loss(final.state_dict()), float32_loss(initial)
        return runs[key]

    return train


def _override_value(value) -> str:
    if value is None:
        return "null"
    return f"'{value}'" if isinstance(value, str) else str(value)  # quoted: optim_args has a '='


def against_float32(train, precision: dict) -> tuple[float, float]:
    """(projection of the update on the float32 run's, loss gap as a fraction of its drop)."""
    reference = FLOAT32 | {k: v for k, v in precision.items() if k in ("sft.learning_rate", "peft")}
    ref_update, ref_loss, initial_loss = train(reference)
    update, loss, _ = train(precision)
    projection = float(update @ ref_update / (ref_update @ ref_update))
    return projection, abs(loss - ref_loss) / (initial_loss - ref_loss)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["a100", "h100", "h200", "24gb"])
def test_gpu_profile_precision_trains_like_float32(train_small_phi3, profile):
    precision = precision_of(profile)
    if precision["peft"] == "qlora":
        precision["peft"] = "lora"  # bf16 adapters on a bf16 base: QLoRA's precision without the 4 bits
    else:
        assert precision["sft.learning_rate"] == 5e-6
    projection, loss_gap = against_float32(train_small_phi3, precision)
    assert projection >= MIN_PROJECTION and loss_gap <= MAX_LOSS_GAP, (projection, loss_gap)


@pytest.mark.slow
def test_pure_bf16_adamw_loses_the_updates(train_small_phi3):
    """The control: the profiles' settings before stochastic rounding fail both criteria."""
    projection, loss_gap = against_float32(train_small_phi3, PURE_BF16 | {"sft.learning_rate": 5e-6})
    assert projection < 0.2 and loss_gap > 0.5, (projection, loss_gap)
