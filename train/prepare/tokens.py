"""Render and tokenize conversations in batches, with loss labels on the assistant replies.

Each conversation becomes its rendering through the chat template and the character spans of
what is trained; one tokenization of the rendering gives the ids, and a token is trained when it
lies in a span (transformers' own rule for `{% generation %}` blocks: from the token holding a
span's first character to the token holding its last). The spans come from, in order:
- the template's `{% generation %}` markers, when it has them;
- TRL's training variant of the template (the original plus markers), when TRL ships one: the
  ids and labels are then exactly those TRL's SFTTrainer builds (`tests/train/test_data.py`);
- otherwise, rendering: reply k starts where the prompt before it, rendered with the generation
  prompt (what inference sees), ends, and ends where the conversation cut after reply k stops
  agreeing with the whole one, so the end of turn is trained and the next turn's header is not.
  A template that renders earlier turns differently once later ones follow cannot be masked so;
  it is refused with the ways out.

Every row is checked as well: each message shows up in the rendering (a template without a system
role drops system text), and each reply trains the token the template ends it with, or the model
never learns to stop. A failing row gets `Encoded.problem`, which the pipeline reports with its
file and line. The ids and labels are written next to the prepared JSON lines (see
`train.prepare.pipeline`), so training does not tokenize again and the preview shows exactly the
tokens the trainer receives.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from common.generation import end_of_turn_id, longest_token_chars
from common.rendering import as_rendered, empty_system_turn_is_nothing, render_text
from train.errors import ConfigError
from train.prepare.formats import Messages

IGNORE_INDEX = -100  # the label that the loss skips (transformers' convention)
BATCH_SIZE = 256  # conversations per render/tokenize call: large enough to amortise the call
# A message longer than (max_length + MARGIN_TOKENS) tokens' worth of characters cannot fit whatever
# the rest of the conversation; clipped there, its first max_length tokens stay as they were (the
# margin absorbs merges across the cut), and a 50 MB row costs no more than a long one.
MARGIN_TOKENS = 64
PROBE = [
    {"role": "user", "content": "Which day comes after Monday?"},
    {"role": "assistant", "content": "Tuesday"},
    {"role": "user", "content": "And after that?"},
    {"role": "assistant", "content": "Wednesday"},
]


def clip_messages(messages: Messages, chars: int) -> tuple[Messages, bool]:
    """The messages with each content cut at `chars` characters, and whether any was cut."""
    if all(len(m["content"]) <= chars for m in messages):
        return messages, False
    return [{**m, "content": m["content"][:chars]} for m in messages], True


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    problem: str | None = None  # why the conversation cannot be trained as rendered (then no ids)


class NotRenderedAsPrefix(ValueError):
    """The template renders an earlier turn differently once later turns follow."""


@dataclass(frozen=True)
class ChatTokenizer:
    """A tokenizer plus the choices that decide what the trainer sees."""

    tokenizer: Any
    assistant_only_loss: bool = True

    @property
    def name(self) -> str:
        return self.tokenizer.name_or_path

    @cached_property  # TRL looks the template up by matching it; once per tokenizer is enough
    def training_template(self) -> str:
        """The template the conversations are rendered with: TRL's training variant of the model's
        template when masking needs markers and TRL ships one, else the model's own."""
        from trl.chat_template_utils import get_training_chat_template, has_generation_markers

        own = self.tokenizer.chat_template
        if not self.assistant_only_loss or has_generation_markers(own):
            return own
        try:
            return get_training_chat_template(self.tokenizer) or own
        except ValueError:  # a template TRL does not know: masked by rendering
            return own

    @cached_property
    def masks_by_rendering(self) -> bool:
        from trl.chat_template_utils import has_generation_markers

        return self.assistant_only_loss and not has_generation_markers(self.training_template)

    @cached_property
    def end_of_turn(self) -> int:
        """The token each reply ends with; it must be trained (checked by load_tokenizer to exist)."""
        token = end_of_turn_id(self.tokenizer)
        if token is None:
            raise ConfigError(f"{self.name}: its chat template writes no special token after a reply")
        return token

    @cached_property
    def longest_token_chars(self) -> int:
        """An upper bound on the characters one token stands for (the serving side's bound too)."""
        return longest_token_chars(self.tokenizer)

    @cached_property
    def _special_text(self) -> re.Pattern | None:
        """The text of each special token: the tokenizer reads it out of any text as that token."""
        tokens = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special and t.content}
        # Longest first, so `<|end|>` is not found inside a longer token that starts the same way.
        return re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True)))) if tokens else None

    def special_token_text(self, messages: Messages) -> str | None:
        """Why the row cannot be trained as written, when a message holds a special token's text.

        The rendering is tokenized with the template's special tokens recognised, so `<|end|>`
        written inside a reply would become the end-of-turn token there (and `<|user|>` a forged
        turn): the model would learn to stop mid-reply. Such a row is refused, not rewritten, so what
        is trained is what was written."""
        if self._special_text is None:
            return None
        for i, message in enumerate(messages):
            if found := self._special_text.search(message["content"]):
                token = found.group()
                return (
                    f"messages[{i}] ({message['role']}) holds the text {token!r} at character {found.start() + 1}, "
                    f"which the tokenizer of {self.name} reads as its special token "
                    f"(id {self.tokenizer.convert_tokens_to_ids(token)}), so the model would learn that token "
                    "there; remove it from the data or write it differently"
                )
        return None

    def check_template(self) -> None:
        """Refuse a template that cannot be masked, naming the model and the ways out."""
        self.end_of_turn  # noqa: B018 - raises when no special token ends a reply
        if self.masks_by_rendering:
            try:
                self._rendered_spans(PROBE)
            except NotRenderedAsPrefix as e:
                raise ConfigError(f"{self.name}: {e}: {self._ways_out()}") from None

    def fingerprint(self) -> str:
        """Changes whenever the ids or labels for the same conversation could change."""
        tok = self.tokenizer
        parts = {
            "class": type(tok).__name__,
            "vocab": len(tok),
            "template": self.training_template,
            # A template may render the date (Llama 3.2): then a new day prepares anew.
            "probe": tok.apply_chat_template(PROBE, chat_template=self.training_template, tokenize=False),
            "special": tok.special_tokens_map,
            "backend": hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
            if hasattr(tok, "backend_tokenizer")
            else tok.name_or_path,
            "assistant_only_loss": self.assistant_only_loss,
            "empty_system_turn": empty_system_turn_is_nothing(tok, self.training_template),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def encode(self, conversations: list[Messages], batch_size: int = BATCH_SIZE) -> list[Encoded]:
        """Ids and labels per conversation, untruncated, in order; a problem instead of ids for a
        conversation the template loses a turn of, or does not teach where a reply ends."""
        encoded: list[Encoded] = []
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start : start + batch_size]
            rendered = self._render(batch)
            texts = [text for text, _ in rendered if text is not None]
            tokens = self.tokenizer(texts or [""], add_special_tokens=False, return_offsets_mapping=True)
            row = 0
            for messages, (text, spans_or_problem) in zip(batch, rendered):
                if text is None:
                    encoded.append(Encoded([], [], spans_or_problem))
                    continue
                encoded.append(self._labelled(messages, text, spans_or_problem, tokens, row))
                row += 1
        return encoded

    def prompt_length(self, messages: Messages) -> int:
        """Tokens before the first assistant reply: they must fit for anything to be trained."""
        first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return len(self._render_one(messages[:first], generation_prompt=True, tokenize=True))

    # -- rendering ---------------------------------------------------------------------------------

    def _as_rendered(self, messages: Messages) -> Messages:
        """The conversation as the serving side renders it too (common.rendering); messages are named
        by their index in the row, without an empty system turn added."""
        return as_rendered(self.tokenizer, messages, self.training_template)

    def _render_one(self, messages: Messages, generation_prompt: bool = False, tokenize: bool = False):
        text = render_text(self.tokenizer, messages, self.training_template, generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if tokenize else text

    def _render(self, batch: list[Messages]) -> list[tuple[str | None, Any]]:
        """(text, trained character spans) per conversation, or (None, problem)."""
        from jinja2 import TemplateError

        if self.masks_by_rendering:
            return [self._render_by_turns(messages) for messages in batch]
        from transformers.utils.chat_template_utils import render_jinja_template

        def render(conversations):  # what apply_chat_template renders, with the generation spans
            texts, spans = render_jinja_template(
                conversations=[self._as_rendered(m) for m in conversations],
                chat_template=self.training_template,
                return_assistant_tokens_mask=self.assistant_only_loss,
                **self.tokenizer.special_tokens_map,
            )
            return list(zip(texts, spans if self.assistant_only_loss else [None] * len(texts)))

        try:
            return render(batch)
        except TemplateError:  # the template refuses some conversation (raise_exception): which one
            out = []
            for messages in batch:
                try:
                    out += render([messages])
                except TemplateError as e:
                    out.append((None, f"the chat template of {self.name} refuses this conversation: {e}"))
            return out

    def _render_by_turns(self, messages: Messages) -> tuple[str | None, Any]:
        from jinja2 import TemplateError

        try:
            return self._rendered_spans(messages)
        except NotRenderedAsPrefix as e:
            return None, f"{e}: {self._ways_out()}"
        except TemplateError as e:
            return None, f"the chat template of {self.name} refuses this conversation: {e}"

    def _rendered_spans(self, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
        """The rendering and each reply's character span, from renderings of the conversation's
        prefixes: a reply starts after the prompt before it, rendered with the generation prompt,
        and ends where a rendering cut after it stops agreeing with the whole (the last reply:
        the end of the text, so an end-of-conversation token such as Phi-3.5's EOS is trained)."""
        full = self._render_one(messages)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if k == 0:
                raise NotRenderedAsPrefix("a reply with no turn before it has no prompt to mask")
            prompt = self._render_one(messages[:k], generation_prompt=True)
            if not full.startswith(prompt):
                at = _common_prefix(prompt, full)
                raise NotRenderedAsPrefix(
                    f"the prompt before messages[{k}] renders differently inside the whole conversation "
                    f"({prompt[at : at + 30]!r} vs {full[at : at + 30]!r})"
                )
            if k == len(messages) - 1:
                end = len(full)
            else:
                end = _common_prefix(self._render_one(messages[: k + 1]), full)
            if message["content"].strip() not in full[len(prompt) : end]:
                raise NotRenderedAsPrefix(
                    f"messages[{k}] (a reply) is rendered differently once later turns follow"
                )
            spans.append((len(prompt), end))
        return full, spans

    def _ways_out(self) -> str:
        return (
            f"the chat template of {self.name} cannot be masked for assistant-only loss. Ways out: "
            "sft.assistant_only_loss=false (train on whole conversations), or model.chat_template=<a "
            ".jinja file, or a template TRL ships: phi3, phi3_5, qwen2_5, llama3, ...>"
        )

    # -- labels and per-row checks ---------------------------------------------------------------

    def _labelled(self, messages: Messages, text: str, spans, tokens, row: int) -> Encoded:
        ids, offsets = list(tokens["input_ids"][row]), tokens["offset_mapping"][row]
        if spans is None:  # the whole sequence is trained
            labels = list(ids)
        else:
            if self.masks_by_rendering:  # a common prefix may end inside the next turn's first token
                ends = sorted({end for _, end in offsets})
                spans = [(start, ends[max(bisect.bisect_right(ends, end) - 1, 0)]) for start, end in spans]
            labels = _mask(ids, spans, _char_to_token(offsets))
        problem = self._unrendered(messages, text)
        if problem is None and spans is not None:
            problem = self._stop_untrained(messages, text, spans, offsets, labels)
        return Encoded(ids, labels, problem)

    def _unrendered(self, messages: Messages, text: str) -> str | None:
        """A message whose text the rendering lacks (searched in order; an empty one may render as
        nothing, as Phi-3.5's template does with an empty system turn)."""
        cursor = 0
        for i, message in enumerate(messages):
            content = message["content"].strip()
            at = text.find(content, cursor) if content else cursor
            if at < 0:
                merge = message["role"] == "system" and i == 0
                return (
                    f"messages[{i}] ({message['role']}) does not appear in the rendering: the chat template "
                    f"of {self.name} has no place for it, so it would be lost. Set "
                    + (
                        "data.merge_system_into_first_user=true to put its text before the first user message, or "
                        if merge
                        else ""
                    )
                    + "model.chat_template=<a .jinja file or a TRL template name> for a template that renders it"
                )
            cursor = at + len(content)
        return None

    def _stop_untrained(self, messages: Messages, text: str, spans, offsets, labels) -> str | None:
        """Each reply must train the end-of-turn token, or the model never learns to stop (and a row
        cut at max_length keeps at least one trained token: the length policy sees to that)."""
        if all(label == IGNORE_INDEX for label in labels):
            return f"no token of it is trained (the loss mask covers none of its replies): {self._ways_out()}"
        replies = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        # A last reply's closing token (Phi-3.5's EOS) is a span of its own in TRL's templates: spans
        # that only whitespace separates are one reply's.
        joined: list[list[int]] = []
        for start, end in spans:
            if joined and not text[joined[-1][1] : start].strip():
                joined[-1][1] = end
            else:
                joined.append([start, end])
        if len(joined) != len(replies):
            return f"{len(replies)} replies, but {len(joined)} trained spans: {self._ways_out()}"
        eot = self.end_of_turn
        # In text order; bisected per reply, so a conversation of n replies costs O(n log n), not n^2.
        trained_stops = [offsets[t][0] for t, label in enumerate(labels) if label == eot]
        for k, (start, end) in zip(replies, joined):
            at = bisect.bisect_left(trained_stops, start)
            if at == len(trained_stops) or trained_stops[at] >= end:
                token = self.tokenizer.convert_ids_to_tokens(eot)
                return (
                    f"the end-of-turn token {token!r} after messages[{k}] is not trained, so the model "
                    f"would not learn to stop: {self._ways_out()}"
                )
        return None


def _mask(ids: list[int], spans, char_to_token) -> list[int]:
    """Labels: the ids from the token holding a span's first character to the one holding its last
    (transformers' rule for {% generation %} spans), IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        first = char_to_token(start)
        if first is None:  # past the text (transformers stops there too)
            break
        last = char_to_token(end - 1)
        for t in range(first, len(ids) if last is None else last + 1):
            labels[t] = ids[t]
    return labels


def _char_to_token(offsets):
    """`Encoding.char_to_token` (the first token whose span holds the character, or None) by
    bisection: the tokenizers library scans every token per call, which made a row of n replies
    cost n x its length."""
    starts = [start for start, _ in offsets]

    def find(char: int) -> int | None:
        last = bisect.bisect_right(starts, char) - 1  # the last token starting at or before char
        if last < 0:
            return None
        token = bisect.bisect_left(starts, starts[last])  # the first of those sharing its start
        while token < len(offsets) and offsets[token][0] <= char:
            if char < offsets[token][1]:
                return token
            token += 1
        return None

    return find


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (bisected: slices compare in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
