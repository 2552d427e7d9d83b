"""Load a causal LM and its tokenizer from a hub id or a local directory.

One code path for every model: the tiny offline model is a directory with the same layout
as a hub checkout of Phi-3, so what the tests exercise is what loads Phi-3.5-mini on a GPU.
`HF_HUB_OFFLINE=1` is honoured by transformers itself.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from train.attention import VARLEN_SDPA
from train.config import AttnImplementation, ModelDtype, PeftMethod
from train.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_attn_implementation(requested: AttnImplementation) -> str:
    """`auto`: on CUDA an attention that runs a padding-free batch one conversation at a time:
    flash_attention_2 when flash-attn is installed, else torch's own varlen kernel (`varlen_sdpa`,
    train/attention.py), else flex_attention; never sdpa, which would attend over the whole
    flattened batch. On a CPU, sdpa: correct for packed rows too (a block-diagonal mask), and the
    CPU's rows are short."""
    if requested != AttnImplementation.auto:
        return str(requested)
    if not torch.cuda.is_available():
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
        return VARLEN_SDPA
    return "flex_attention"


def resolve_dtype(requested: ModelDtype) -> torch.dtype:
    if requested == ModelDtype.auto:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, requested)


def check_peft_hardware(peft_cfg) -> None:
    """Fail before anything large is loaded when the PEFT method cannot run here."""
    if (peft_cfg.method == PeftMethod.qlora or peft_cfg.load_in_4bit) and not torch.cuda.is_available():
        raise ConfigError(
            "peft=qlora quantises the base model to 4 bits with bitsandbytes, which needs a "
            "CUDA GPU and none is visible here. Use peft=lora (or peft=none) on this machine, "
            "or run +profile=24gb on a GPU machine."
        )


def load_tokenizer(model_cfg) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a real pad token and the configured chat template.

    Phi-3's tokenizers ship with pad == <|endoftext|> (a stop token) or none at all; padding
    with a stop token masks it out of the labels, so the model never learns to stop. The
    seed recipe padded with <unk>, which is a real vocabulary token. Here the pad is a
    dedicated token (`model.pad_token`, added if the vocabulary lacks it).
    """
    tokenizer = AutoTokenizer.from_pretrained(
        model_cfg.name_or_path,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    stop_ids = {tokenizer.eos_token_id}
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id in stop_ids:
        tokenizer.add_special_tokens({"pad_token": model_cfg.pad_token})
        log.info("pad token set to %s (id %d)", tokenizer.pad_token, tokenizer.pad_token_id)
    tokenizer.padding_side = "right"
    return tokenizer


def quantization_config(peft_cfg):
    if not (peft_cfg.method == PeftMethod.qlora or peft_cfg.load_in_4bit):
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=peft_cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=peft_cfg.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, peft_cfg.bnb_4bit_compute_dtype),
    )


def load_model(model_cfg, peft_cfg, tokenizer: PreTrainedTokenizerBase):
    attn = resolve_attn_implementation(model_cfg.attn_implementation)
    dtype = resolve_dtype(model_cfg.dtype)
    log.info("loading %s (attention %s, dtype %s)", model_cfg.name_or_path, attn, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_cfg.name_or_path,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        attn_implementation=attn,
        dtype=dtype,
        quantization_config=quantization_config(peft_cfg),
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # Phi-3 reserves spare rows (32064 > 32011 tokens), so this is rare.
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def lora_config(peft_cfg):
    """peft's LoraConfig for lora/qlora/dora; None for a full fine-tune."""
    if peft_cfg.method == PeftMethod.none:
        return None
    from peft import LoraConfig

    target = peft_cfg.target_modules
    return LoraConfig(
        r=peft_cfg.r,
        lora_alpha=peft_cfg.lora_alpha,
        lora_dropout=peft_cfg.lora_dropout,
        target_modules=target if isinstance(target, str) else list(target),
        bias=peft_cfg.bias,
        use_rslora=peft_cfg.use_rslora,
        use_dora=peft_cfg.method == PeftMethod.dora,
        task_type="CAUSAL_LM",
    )
