"""Rendering a chat and generating its answer, once for serving and for evaluation.

The scoring script (deploy/scoring/score.py), training's held-out evaluation
(train/evaluate.py) and the parity check all render prompts with `prompt_ids` (common.rendering,
the renderer data preparation cuts the training ids from) and generate
with `Generator`, so what evaluation measures is what the endpoint serves: the same template
call, the same stop ids, the same decoding and the same finish reasons.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from functools import cached_property
from typing import Any

from common.payloads import RequestLimits, check_context
from common.rendering import prompt_ids, special_token_ids

SENTINEL_REPLY = "Sentinel reply 7"


def end_of_turn_id(tokenizer, chat_template: str | None = None) -> int | None:
    """The token the chat template closes an assistant reply with: the first special token rendered
    after a reply that another turn follows (<|end|> for Phi-3, 3.5 and 4-mini, <|im_end|> for
    ChatML, <|eot_id|> for Llama 3). None when no special token follows a reply."""
    probe = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": SENTINEL_REPLY},
        {"role": "user", "content": "Bye"},
    ]
    text = tokenizer.apply_chat_template(probe, chat_template=chat_template, tokenize=False)
    if SENTINEL_REPLY not in text:
        return None
    after = text.index(SENTINEL_REPLY) + len(SENTINEL_REPLY)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = special_token_ids(tokenizer)
    pairs = zip(encoded["input_ids"], encoded["offset_mapping"])
    return next((token for token, (start, _) in pairs if start >= after and token in special), None)


def split_for_generation(messages: list[dict]) -> tuple[list[dict], str] | None:
    """(prompt messages, reference answer) for the last assistant turn, or None: how a held-out
    conversation is asked (training's evaluation, deploy's evaluation gate)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return messages[:i], messages[i]["content"]
    return None


@contextlib.contextmanager
def torch_threads(model, threads: int | None):
    """Generate on a CPU with `threads` torch threads (None: torch's default), then restore them.
    Decoding a small model is memory-bound: on the shared 2-core machine one thread answered 6x
    faster than two (SmolLM2-135M, 16 prompts: 16 vs 2.5 tokens/s at load average 12), whose
    OpenMP threads wait on each other whenever another process holds a core."""
    import torch

    if threads is None or model.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def longest_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token stands for: the longest token string of the
    vocabulary (a byte-level or SentencePiece token string is never shorter than its text; the
    byte-fallback ones, `<0xE2>`, are longer). 0.1 s for Phi-3's 32,064 tokens."""
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max(len(token or "") for token in vocabulary)


def stop_at_text(tokenizer, stop: list[str], prompt_width: int):
    """A stopping criterion for `model.generate`: a row stops once the text of its last tokens
    holds a stop string. It decodes the last 4 x (longest stop string) + 4 tokens of each row per
    step (a token stands for at least one byte, a character for at most four), so its cost does
    not depend on the vocabulary; transformers' `stop_strings` precomputes tables over the whole
    vocabulary for every stop string (tens of seconds and a gigabyte for one of a few thousand
    characters on Phi-3's 32,064 tokens)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = 4 * max(map(len, stop)) + 4

    class StopAtText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tail = input_ids[:, max(prompt_width, input_ids.shape[1] - window) :]
            texts = tokenizer.batch_decode(tail, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([StopAtText()])


class Generator:
    """A transformers model and its tokenizer, answering chat prompts in left-padded batches."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def eos_token_ids(self) -> list[int]:
        """Where an answer ends: the generation config's EOS ids (Phi-3.5: <|end|>, ...)."""
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return sorted({eos} if isinstance(eos, int) else set(eos))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return prompt_ids(self.tokenizer, messages)

    @property
    def context_tokens(self) -> int:
        """Positions the model was built for: prompt plus answer must fit."""
        return self.model.config.max_position_embeddings

    @cached_property
    def max_prompt_chars(self) -> int:
        """Characters above which a prompt cannot fit the context, whatever its tokens. Servers
        refuse such a prompt before tokenizing it (a megabyte-long one takes most of a second)."""
        return self.context_tokens * longest_token_chars(self.tokenizer)

    def request_limits(self, limits: RequestLimits | None = None) -> RequestLimits:
        """`limits` (default RequestLimits()) with an unset max_prompt_chars bounded by this model."""
        limits = limits or RequestLimits()
        if limits.max_prompt_chars is None:
            limits = replace(limits, max_prompt_chars=self.max_prompt_chars)
        return limits

    def checked_prompt_ids(self, messages: list[dict], max_new_tokens: int) -> list[int]:
        """The prompt's ids; BadRequest naming both numbers when prompt + answer exceed the context."""
        ids = self.prompt_ids(messages)
        check_context(len(ids), max_new_tokens, self.context_tokens)
        return ids

    def full_kwargs(self, generate: dict) -> dict:
        """Everything passed to model.generate besides the prompt."""
        return {**generate, "eos_token_id": self.eos_token_ids, "pad_token_id": self.tokenizer.pad_token_id}

    def answer(self, messages: list[dict], generate: dict, stop: list[str]) -> dict:
        return self.answer_batch([messages], generate, stop)[0]

    def answer_batch(self, conversations: list[list[dict]], generate: dict, stop: list[str]) -> list[dict]:
        """One answer per conversation: `text`, `finish_reason` (stop | length) and `usage`."""
        return self.answer_prompts([self.prompt_ids(m) for m in conversations], generate, stop)

    def answer_prompts(self, prompts: list[list[int]], generate: dict, stop: list[str]) -> list[dict]:
        """`answer_batch` for prompts already rendered and tokenized (`checked_prompt_ids`)."""
        import torch

        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        attention_mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device
        )
        kwargs: dict[str, Any] = self.full_kwargs(generate)
        if stop:
            kwargs["stopping_criteria"] = stop_at_text(self.tokenizer, stop, width)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self.model.train(was_training)
        return [self.decode_answer(prompt, row[width:].tolist(), stop) for prompt, row in zip(prompts, out)]

    def decode_answer(self, prompt: list[int], new: list[int], stop: list[str]) -> dict:
        """An answer from its generated ids: text up to EOS, cut before the first stop string and
        stripped; finish reason; usage. (Also the local server's batched generator's answers.)"""
        eos = set(self.eos_token_ids)
        end = next((i + 1 for i, t in enumerate(new) if t in eos), None)
        if end:
            new = new[:end]
        else:  # a row ended by a stop string is padded up to the batch's longest
            while new and new[-1] == self.tokenizer.pad_token_id:
                new.pop()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        # Stop strings end generation after the token containing them; the answer ends before.
        hit = [text.index(s) for s in stop if s in text]
        text = text[: min(hit)] if hit else text
        return {
            "text": text.strip(),
            "finish_reason": "stop" if hit or end else "length",
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(new),
                "total_tokens": len(prompt) + len(new),
            },
        }
