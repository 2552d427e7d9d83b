"""Load a causal LM and its tokenizer from a hub id or a local directory.

One code path for every model: the tiny offline model is a directory with the same layout
as a hub checkout of Phi-3, so what the tests exercise is what loads Phi-3.5-mini on a GPU.
`HF_HUB_OFFLINE=1` is honoured by transformers itself.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from common.generation import end_of_turn_id
from common.rendering import fix_changing_inputs
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


def loads_in_4bit(peft_cfg) -> bool:
    """QLoRA, or any method with `peft.load_in_4bit`: the base weights load as NF4 (bitsandbytes)."""
    return peft_cfg.method == PeftMethod.qlora or bool(peft_cfg.load_in_4bit)


def check_peft_hardware(peft_cfg) -> None:
    """Fail before anything large is loaded when the PEFT method cannot run here."""
    if loads_in_4bit(peft_cfg) and not torch.cuda.is_available():
        raise ConfigError(
            "peft=qlora quantises the base model to 4 bits with bitsandbytes, which needs a "
            "CUDA GPU and none is visible here. Use peft=lora (or peft=none) on this machine, "
            "or run +profile=24gb on a GPU machine."
        )


HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub (or the HTTPS proxy in front of it) accepts a connection within `timeout_s`:
    without a network, the hub client's requests would each retry for about a minute."""
    import os
    import socket
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    host = (urlsplit(proxy).hostname, urlsplit(proxy).port or 443) if proxy else HUB_HOST
    try:
        socket.create_connection(host, timeout=timeout_s).close()
        return True
    except OSError:
        return False


def ensure_hub_model_available(model_cfg) -> None:
    """A hub model that cannot be had stops at once, with the fix; one that is cached while the
    hub cannot be reached is read from the cache (HF_HUB_OFFLINE) instead of waiting on retries."""
    import os

    from huggingface_hub import constants, try_to_load_from_cache

    name = str(model_cfg.name_or_path)
    if Path(name).expanduser().exists() or name.count("/") != 1:
        return  # a local folder, or not a hub id: from_pretrained reports it
    cached = isinstance(try_to_load_from_cache(name, "config.json", revision=model_cfg.revision), str)
    offline = constants.HF_HUB_OFFLINE or not hub_reachable()
    if offline and not cached:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "huggingface.co cannot be reached"
        raise ConfigError(
            f"model {name} is not in the local Hugging Face cache and {why}: download it once with "
            f"network (`hf download {name}`), or set model.name_or_path=<a local folder>"
        )
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True


def context_length(model_cfg) -> int | None:
    """The model's context window (config.json's max_position_embeddings), if it says."""
    config = AutoConfig.from_pretrained(
        model_cfg.name_or_path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    return getattr(config, "max_position_embeddings", None)


def load_tokenizer(model_cfg) -> PreTrainedTokenizerBase:
    """The model's tokenizer with the configured chat template and a pad token that is no stop token.

    Will the fine-tuned model stop? Its chat template must close a reply with a special token
    (the end of turn: <|end|>, <|im_end|>, <|eot_id|>), generation must stop at it, and the pad
    must not be a stop token (Phi-3's tokenizers pad with <|endoftext|>). Anything else is a
    ConfigError naming the way out, raised before data or weights are loaded.
    """
    ensure_hub_model_available(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        model_cfg.name_or_path,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if model_cfg.chat_template:
        tokenizer.chat_template = read_chat_template(model_cfg.chat_template)
    if not tokenizer.chat_template:
        raise ConfigError(
            f"{model_cfg.name_or_path}: the tokenizer has no chat template; set model.chat_template to a "
            f".jinja file or a template TRL ships ({', '.join(trl_template_names())})"
        )
    # Llama 3's template writes today's date: fixed now, so the model is trained, logged and served
    # with one date (common.rendering).
    tokenizer.chat_template, fixed = fix_changing_inputs(tokenizer.chat_template)
    if fixed:
        log.info("chat template inputs fixed for training and serving: %s", fixed)
    config = AutoConfig.from_pretrained(
        model_cfg.name_or_path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    stops = stop_token_ids(model_cfg, tokenizer, config)
    token, added = choose_pad_token(tokenizer, model_cfg.pad_token, embedding_rows(config, tokenizer), stops)
    if added:
        tokenizer.add_special_tokens({"pad_token": token})
    else:
        tokenizer.pad_token = token
    log.info("pad token %s (id %d)%s", token, tokenizer.pad_token_id, " added" if added else "")
    tokenizer.padding_side = "right"
    return tokenizer


def trl_chat_templates_dir() -> Path:
    import trl

    return Path(trl.__file__).parent / "chat_templates"


def trl_template_names() -> list[str]:
    return sorted(p.stem for p in trl_chat_templates_dir().glob("*.jinja"))


def read_chat_template(value: str) -> str:
    """`model.chat_template`: a Jinja file, or the name of one TRL ships (trl/chat_templates/NAME.jinja)."""
    for path in (Path(value).expanduser(), trl_chat_templates_dir() / f"{value}.jinja"):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise ConfigError(
        f"model.chat_template={value}: no such file, and not a template TRL ships "
        f"({', '.join(trl_template_names())})"
    )


def stop_token_ids(model_cfg, tokenizer, config) -> list[int]:
    """The ids generation stops at (`model.stop_tokens`, else the model's generation config); they
    must include the token the chat template ends a reply with, or the model would never stop."""
    name = model_cfg.name_or_path
    end = end_of_turn_id(tokenizer)
    if end is None:
        raise ConfigError(
            f"{name}: its chat template writes no special token after an assistant reply, so nothing "
            "tells generation where a reply ends; set model.chat_template to one that does "
            f"(a .jinja file or one of TRL's: {', '.join(trl_template_names())})"
        )
    if model_cfg.stop_tokens:
        vocab = tokenizer.get_vocab()
        unknown = [t for t in model_cfg.stop_tokens if t not in vocab]
        if unknown:
            raise ConfigError(f"model.stop_tokens: {unknown} are not in the vocabulary of {name}")
        where, ids = "model.stop_tokens", [vocab[t] for t in model_cfg.stop_tokens]
    else:
        where, ids = "generation_config.eos_token_id", generation_stop_ids(model_cfg, config)
    if end not in ids:
        suggested = ",".join(f"'{t}'" for t in tokenizer.convert_ids_to_tokens([end, *ids]))
        raise ConfigError(
            f"{where} {ids} of {name} lacks {tokenizer.convert_ids_to_tokens(end)!r} (id {end}), the token "
            "its chat template ends every reply with: the fine-tuned model would not stop. Add it, e.g. "
            f'"model.stop_tokens=[{suggested}]" (written into the trained model\'s generation config)'
        )
    return ids


def generation_stop_ids(model_cfg, config) -> list[int]:
    """generation_config.eos_token_id as the loaded model will have it (from config.json without one)."""
    try:
        eos = GenerationConfig.from_pretrained(
            model_cfg.name_or_path, revision=model_cfg.revision
        ).eos_token_id
    except OSError:  # no generation_config.json: transformers derives it from the model config
        eos = None
    if eos is None:
        eos = config.get_text_config().eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def embedding_rows(config, tokenizer) -> int:
    """Rows of the input embedding; Phi-3's and Qwen2.5's have spare rows past the tokenizer's entries."""
    return getattr(config.get_text_config(), "vocab_size", None) or len(tokenizer)


RESERVED_TOKEN = re.compile(r"pad|reserved|placeholder|unused", re.IGNORECASE)


def choose_pad_token(tokenizer, wanted: str, rows: int, stops: list[int]) -> tuple[str, bool]:
    """(pad token, whether to add it): never a stop token, and never a new embedding row.

    In order: the tokenizer's own pad unless it is a stop token; `wanted` (`model.pad_token`) if in
    the vocabulary, or added when the embedding has a spare row (hub Phi-3/3.5: 32,011 tokens,
    32,064 rows); the unk token (what the seed recipe padded with; Phi-3's GGUF vocabulary fills
    every row); a reserved token the chat template does not use (Llama 3's
    <|finetune_right_pad_id|>). Growing the embedding would change the model's shape (a LoRA
    adapter would have to carry embedding and head), so otherwise it is refused.
    """
    stop = {*stops, tokenizer.eos_token_id}
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in stop:
        return tokenizer.pad_token, False
    vocab = tokenizer.get_vocab()
    if wanted in vocab:
        if vocab[wanted] in stop:
            raise ConfigError(
                f"model.pad_token={wanted} is a stop token; padding with it hides where replies end"
            )
        return wanted, False
    if len(tokenizer) < rows:
        return wanted, True
    if tokenizer.unk_token is not None and tokenizer.unk_token_id not in stop:
        return tokenizer.unk_token, False
    reserved = [
        token.content
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
        if token_id not in stop
        and token_id != tokenizer.bos_token_id
        and RESERVED_TOKEN.search(token.content)
        and token.content not in tokenizer.chat_template
    ]
    reserved.sort(key=lambda content: "pad" not in content.lower())  # a token named pad first
    if reserved:
        return reserved[0], False
    raise ConfigError(
        f"{tokenizer.name_or_path}: no pad token that is not a stop token. Its own is "
        f"{tokenizer.pad_token!r}, {wanted!r} is not in the vocabulary and the embedding has no spare row "
        f"for it ({len(tokenizer)} tokens, {rows} rows), and it has no unk or reserved token to reuse. "
        "Set model.pad_token to a token of the vocabulary that the data never contains."
    )


def quantization_config(peft_cfg):
    if not loads_in_4bit(peft_cfg):
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
    # load_tokenizer chose a pad that fits the embedding (choose_pad_token): no resize here.
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if model_cfg.stop_tokens:  # checked by load_tokenizer; served with the model
            model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(
                list(model_cfg.stop_tokens)
            )
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
