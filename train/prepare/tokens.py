"""Render and tokenize conversations in batches, with the labels TRL's SFTTrainer would build.

SFTTrainer renders and tokenizes one conversation at a time inside `Dataset.map`. Here whole
batches go through `apply_chat_template` and the fast (Rust) tokenizer at once, and the result
is what TRL would have built: the same template (with `assistant_only_loss`, TRL's training
variant of the model's template, which adds `{% generation %}` markers), the same input ids, and
labels that are -100 where TRL masks the loss. `tests/train/test_data.py` checks the equality
against SFTTrainer's own preparation. The ids and labels are written next to the
prepared JSON lines (see `train.prepare.pipeline`), so training does not tokenize again, and the
preview shows exactly the tokens the trainer receives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from train.prepare.formats import Messages

IGNORE_INDEX = -100  # the label that the loss skips (transformers' convention)
BATCH_SIZE = 256  # conversations per apply_chat_template call: large enough to amortise the call


def with_system_turn(messages: Messages) -> Messages:
    """Phi-3's recipe starts every conversation with a system turn; an empty one renders as nothing."""
    if messages and messages[0]["role"] != "system":
        return [{"role": "system", "content": ""}, *messages]
    return messages


@dataclass(frozen=True)
class ChatTokenizer:
    """A tokenizer plus the choices that decide what the trainer sees."""

    tokenizer: Any
    assistant_only_loss: bool = True
    add_empty_system_turn: bool = True

    @cached_property  # TRL looks the template up by matching it; once per tokenizer is enough
    def chat_template(self) -> str | None:
        """The template TRL trains with: its training variant when masking needs one, else the model's."""
        from trl.chat_template_utils import get_training_chat_template, has_generation_markers

        if self.assistant_only_loss and not has_generation_markers(self.tokenizer.chat_template):
            return get_training_chat_template(self.tokenizer)
        return None  # the tokenizer's own

    def fingerprint(self) -> str:
        """Changes whenever the ids or labels for the same conversation could change."""
        tok = self.tokenizer
        parts = {
            "class": type(tok).__name__,
            "vocab": len(tok),
            "template": self.chat_template or tok.chat_template,
            "special": tok.special_tokens_map,
            "backend": hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
            if hasattr(tok, "backend_tokenizer")
            else tok.name_or_path,
            "assistant_only_loss": self.assistant_only_loss,
            "add_empty_system_turn": self.add_empty_system_turn,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def encode(self, conversations: list[Messages], batch_size: int = BATCH_SIZE) -> list[dict]:
        """`{"input_ids", "labels"}` per conversation, untruncated, in order."""
        encoded: list[dict] = []
        template = self.chat_template
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start : start + batch_size]
            if self.add_empty_system_turn:
                batch = [with_system_turn(m) for m in batch]
            out = self.tokenizer.apply_chat_template(
                batch,
                chat_template=template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=self.assistant_only_loss,
            )
            masks = out["assistant_masks"] if self.assistant_only_loss else None
            for i, ids in enumerate(out["input_ids"]):
                ids = list(ids)
                labels = (
                    [t if m else IGNORE_INDEX for t, m in zip(ids, masks[i])] if masks is not None else ids
                )
                encoded.append({"input_ids": ids, "labels": list(labels)})
        return encoded

    def prompt_length(self, messages: Messages) -> int:
        """Tokens before the first assistant reply: they must fit for anything to be trained."""
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = with_system_turn(messages[:first]) if self.add_empty_system_turn else messages[:first]
        out = self.tokenizer.apply_chat_template(
            prompt,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            add_generation_prompt=True,
        )
        return len(out["input_ids"])
