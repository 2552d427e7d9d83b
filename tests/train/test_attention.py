"""Attention for padding-free batches: a packed row computes what its conversations do alone.

TRL's own padding-free collator packs the rows here (position_ids restarting per conversation,
cu_seq_lens), as SFTTrainer does with `packing_strategy=bfd`. On a CPU `varlen_sdpa` runs its
stand-in for torch's varlen kernel (one SDPA call per sequence, train/attention.py); the CUDA
kernel itself runs in the GPU kit's benchmark (bench/gpu_bench.sh).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from train import model as train_model
from train.attention import VARLEN_SDPA
from train.config import AttnImplementation
from train.tiny_model import ensure_tiny_phi3

LENGTHS = [7, 12, 5, 9]
ATOL = 1e-5  # float32; measured differences are about 2e-7


def tiny(attn: str, **config) -> torch.nn.Module:
    path = ensure_tiny_phi3()
    settings = AutoConfig.from_pretrained(path)
    for key, value in config.items():
        setattr(settings, key, value)
    return AutoModelForCausalLM.from_pretrained(path, config=settings, attn_implementation=attn).eval()


def documents() -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(10, 500, (n,), generator=generator).tolist() for n in LENGTHS]


def packed(docs) -> dict:
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": d} for d in docs]
    )
    return {k: v for k, v in batch.items() if k not in ("labels", "seq_idx")}


def each_alone(model, docs) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([d]), use_cache=False).logits[0] for d in docs])


@pytest.mark.parametrize("use_cache", [False, True])
def test_a_packed_row_computes_each_conversation_alone(use_cache):
    """No attention across conversations, also when the forward builds a KV cache (the model's
    default use_cache=True): transformers then finds no packing in the position_ids and sdpa
    attends across the whole row, but varlen_sdpa follows the collator's boundaries."""
    model, docs = tiny(VARLEN_SDPA), documents()
    with torch.no_grad():
        logits = model(**packed(docs), use_cache=use_cache).logits[0]
    torch.testing.assert_close(logits, each_alone(model, docs), atol=ATOL, rtol=0)


def test_sdpa_on_a_packed_row_without_a_cache_keeps_conversations_apart():
    """What the CPU's `auto` (sdpa) trains with: SFTTrainer passes use_cache=False."""
    model, docs = tiny("sdpa"), documents()
    with torch.no_grad():
        logits = model(**packed(docs), use_cache=False).logits[0]
    torch.testing.assert_close(logits, each_alone(model, docs), atol=ATOL, rtol=0)


def test_sliding_window_matches_sdpa_conversation_by_conversation():
    """Phi-3-mini-4k has sliding_window 2047; a window of 4 here cuts into every conversation."""
    docs = documents()
    with torch.no_grad():
        logits = tiny(VARLEN_SDPA, sliding_window=4)(**packed(docs), use_cache=False).logits[0]
    torch.testing.assert_close(logits, each_alone(tiny("sdpa", sliding_window=4), docs), atol=ATOL, rtol=0)
    assert not torch.allclose(logits, each_alone(tiny("sdpa"), docs), atol=1e-3)  # the window mattered


def test_padded_batches_and_generation_match_sdpa():
    varlen, sdpa, docs = tiny(VARLEN_SDPA), tiny("sdpa"), documents()
    padded = DataCollatorForLanguageModeling(pad_token_id=0)([{"input_ids": d} for d in docs])
    padded = {k: padded[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(varlen(**padded).logits, sdpa(**padded).logits, atol=ATOL, rtol=0)
    prompt = torch.tensor([docs[1]])
    generated = varlen.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert torch.equal(generated, sdpa.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8))


@pytest.mark.parametrize("attn", ["sdpa", VARLEN_SDPA])
def test_packed_training_has_the_loss_of_padded_training(tmp_path, attn):
    """8 conversations a step, either as one packed row or as 8 padded rows: the same loss."""
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_phi3())
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 17, 9, 30, 12, 7, 21, 14]
    rows = Dataset.from_dict(
        {"input_ids": [torch.randint(10, 500, (n,), generator=generator).tolist() for n in lengths]}
    )

    def losses(packing: bool) -> list[float]:
        torch.manual_seed(0)
        args = SFTConfig(
            output_dir=str(tmp_path / str(packing)),
            use_cpu=True,
            bf16=False,
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            max_steps=3,
            learning_rate=1e-3,
            packing=packing,
            packing_strategy="bfd",
            max_length=256 if packing else 64,  # packed: all 8 in one row of 115 tokens
            per_device_train_batch_size=1 if packing else len(lengths),
        )
        trainer = SFTTrainer(
            model=tiny(attn).train(), args=args, train_dataset=rows, processing_class=tokenizer
        )
        assert trainer.padding_free == packing
        trainer.train()
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    assert losses(packing=True) == pytest.approx(losses(packing=False), rel=1e-5)


@pytest.mark.parametrize(
    "cuda,installed,expected",
    [
        (False, {"flash_attn"}, "sdpa"),
        (True, {"flash_attn", "torch.nn.attention.varlen"}, "flash_attention_2"),
        (True, {"torch.nn.attention.varlen"}, VARLEN_SDPA),
        (True, set(), "flex_attention"),
    ],
)
def test_auto_never_picks_sdpa_on_cuda(monkeypatch, cuda, installed, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert train_model.resolve_attn_implementation(AttnImplementation.auto) == expected
    assert train_model.resolve_attn_implementation(AttnImplementation.sdpa) == "sdpa"  # asked for: kept
