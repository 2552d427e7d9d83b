"""A tiny Phi-3-architecture model and tokenizer, built offline and cached.

The embedded default (`model=tiny`, used by `python -m train` with no arguments and by the
tests) must run with no network. Rather than a special code path, this module *builds a
model directory* that looks exactly like a hub checkout of Phi-3 (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json with a chat template), so the
loading code in `train.model` is the same for the tiny model and for
microsoft/Phi-3.5-mini-instruct.

- Tokenizer: byte-level BPE trained with `tokenizers` on the bundled sample data, with
  Phi-3.5-mini-instruct's special tokens in their roles: `<|end|>` closes a turn,
  `<|endoftext|>` is EOS and (as on the hub) the pad, `<s>` BOS, `<unk>` unk. So the pad rule
  of `train.model` runs for the tiny model as for the real one (`<|pad|>` goes into a spare
  embedding row: 512 tokens, 576 rows, as Phi-3.5 has 32,011 tokens and 32,064 rows).
- Model: `Phi3ForCausalLM` from a small `Phi3Config`, random weights with a fixed seed, and
  Phi-3.5's generation stop ids: `<|end|>`, `<|assistant|>`, `<|endoftext|>`.

The directory is keyed by a hash of everything that goes into it, written to a temporary
sibling and renamed into place, so concurrent builders (several ranks, parallel tests)
never see a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from common.paths import cache_dir
from train.sample_data import TRAIN_FILE

SPECIAL_TOKENS = ["<unk>", "<s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
# microsoft/Phi-3.5-mini-instruct's special_tokens_map and generation_config.json (eos_token_id
# [32007, 32001, 32000]): <|endoftext|> ends the text, <|end|> ends a turn.
ROLES = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"}
STOP_TOKENS = ["<|end|>", "<|assistant|>", "<|endoftext|>"]
TOKENIZER_VOCAB = 512


def phi35_chat_template() -> str:
    """Phi-3.5-mini-instruct's own chat template, as TRL ships it.

    Using TRL's copy means `sft.assistant_only_loss=true` works unchanged: TRL recognises
    the template and swaps in its training variant with {% generation %} markers, exactly
    as it does for the real model.
    """
    from trl.chat_template_utils import phi3_5_chat_template

    return phi3_5_chat_template


# Sized so the default run learns its task on two CPU cores in about a minute.
MODEL_SHAPE = {
    "vocab_size": 576,  # embedding rows: spare ones past the tokenizer's 512 entries
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
SEED = 0
BUILD = 2  # how weights are made; 2: spare embedding rows start at zero


def _fingerprint() -> str:
    h = hashlib.sha256()
    h.update(TRAIN_FILE.read_bytes())
    parts = [
        SPECIAL_TOKENS,
        ROLES,
        STOP_TOKENS,
        TOKENIZER_VOCAB,
        phi35_chat_template(),
        MODEL_SHAPE,
        SEED,
        BUILD,
    ]
    h.update(json.dumps(parts).encode())
    return h.hexdigest()[:12]


def _sample_texts():
    with TRAIN_FILE.open(encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                yield message["content"]


def build_tokenizer(
    texts=None,
    vocab_size: int = TOKENIZER_VOCAB,
    special_tokens: list[str] = SPECIAL_TOKENS,
    roles: dict[str, str] = ROLES,
    chat_template: str | None = None,
):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (default: the sample
    conversations) with `special_tokens` in their `roles` (bos_token, eos_token, ...) and a chat
    template; by default Phi-3.5's tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts if texts is not None else _sample_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        **roles,
        additional_special_tokens=[t for t in special_tokens if t not in roles.values()],
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        padding_side="right",
    )
    tokenizer.chat_template = chat_template or phi35_chat_template()
    return tokenizer


def build_tiny_phi3(out_dir: Path) -> Path:
    """Write a tiny Phi-3 checkpoint (weights, config, tokenizer) to `out_dir`."""
    from transformers import Phi3Config, Phi3ForCausalLM

    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = Phi3Config(
        **MODEL_SHAPE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return save_random_model(Phi3ForCausalLM, config, tokenizer, ids(STOP_TOKENS), out_dir)


def save_random_model(model_class, config, tokenizer, stop_ids: list[int], out_dir: Path) -> Path:
    """`model_class(config)` with random weights (fixed seed) and greedy generation stopping at
    `stop_ids`, saved with `tokenizer` as a hub-style model directory.

    Embedding rows past the tokenizer start at zero: they are no token and never a training
    target, so a trained model does not produce them; random, they would fill an untrained
    model's greedy answers with ids that decode to nothing."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(SEED)
    model = model_class(config)
    with torch.no_grad():
        for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
            embedding.weight[len(tokenizer) :] = 0
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=stop_ids,
        pad_token_id=config.pad_token_id,
        max_new_tokens=32,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def ensure_tiny_phi3(cache_root: str | os.PathLike | None = None) -> str:
    """Path of the cached tiny model directory, building it on first use."""
    root = Path(cache_root) if cache_root else cache_dir()
    target = root / f"tiny-phi3-{_fingerprint()}"
    if (target / "config.json").exists():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-phi3-", dir=root))
    try:
        build_tiny_phi3(staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
