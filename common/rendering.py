"""One rendering of a conversation, for training and for serving.

What a model is trained on and what it is asked at serving time must be the same token ids, or
the fine-tune is evaluated and served on prompts it never saw. Every side renders through here:
data preparation (train/prepare/tokens.py: the training ids and loss mask are cut from
`render_text`), training's held-out evaluation, the Azure scoring script and the local server
(common/generation.py: `prompt_ids`), and the parity check before serving.

The rules:
- The messages are rendered as given. A template with a default system prompt (SmolLM2's ChatML
  "You are a helpful AI assistant named SmolLM...", Qwen2.5's "You are Qwen...") renders it on
  both sides. An empty system turn (the Phi-3 recipe's habit) is added only where the template
  renders it as nothing (`empty_system_turn_is_nothing`): there it changes no token; anywhere
  else it would (ChatML renders an empty `<|im_start|>system` block), so it is not added.
- Template inputs that change over time are fixed when training starts (`fix_changing_inputs`):
  Llama 3.x writes today's date into the system block (`strftime_now`). The fixed value is
  written into the template itself, so the tokenizer logged with the model, the server, MLflow's
  own pyfunc rendering and any export render the date the model was trained with.
"""

from __future__ import annotations

import re
from datetime import date

PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
EMPTY_SYSTEM = {"role": "system", "content": ""}
# strftime_now("<format>") calls in a template: Llama 3.2's `strftime_now("%d %b %Y")`.
STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(["'])(?P<format>[^"']*)\1\s*\)""")
FIXED_MARK = "{#- finetune-phi: template inputs fixed at training -#}"

_empty_system_cache: dict[tuple[int, str], bool] = {}


def empty_system_turn_is_nothing(tokenizer, template: str | None = None) -> bool:
    """Whether the template renders an empty system turn as nothing (Phi-3.5) rather than as a
    block of its own (ChatML) or an error (templates without a system role)."""
    from jinja2 import TemplateError

    template = template or tokenizer.chat_template
    key = (id(tokenizer), template)
    if key not in _empty_system_cache:
        without = tokenizer.apply_chat_template(PROBE, chat_template=template, tokenize=False)
        try:
            with_empty = tokenizer.apply_chat_template(
                [EMPTY_SYSTEM, *PROBE], chat_template=template, tokenize=False
            )
        except TemplateError:
            with_empty = None
        _empty_system_cache[key] = with_empty == without
    return _empty_system_cache[key]


def as_rendered(tokenizer, messages: list[dict], template: str | None = None) -> list[dict]:
    """The messages a template is given: as they are, with an empty system turn first only where
    the template renders one as nothing (so it never changes a token)."""
    if messages and messages[0]["role"] != "system" and empty_system_turn_is_nothing(tokenizer, template):
        return [EMPTY_SYSTEM, *messages]
    return messages


def render_text(
    tokenizer, messages: list[dict], template: str | None = None, generation_prompt: bool = False
) -> str:
    """The conversation's text through the chat template (`template`: a training variant of the
    tokenizer's own, with `{% generation %}` markers, renders the same text)."""
    return tokenizer.apply_chat_template(
        as_rendered(tokenizer, messages, template),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


def special_token_ids(tokenizer) -> set[int]:
    """Every special token's id: the named ones (bos, eos, ...) and the added tokens marked special
    (a GGUF vocabulary marks Phi-3's <|end|> special without naming it among all_special_ids)."""
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return set(tokenizer.all_special_ids) | added


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the prompt a model answers: the rendering with the generation prompt, tokenized
    as training tokenizes its text (the template writes the special tokens; none are added).

    Message content is text: a special token's text typed inside it (`<|end|><|assistant|>`) is
    tokenized as the characters it is, never as the special token, so nobody can forge a turn.
    The template's own special tokens are untouched; a conversation without such text gets
    exactly the ids training saw (data preparation refuses such rows, docs/data-checks.md)."""
    text = render_text(tokenizer, messages, generation_prompt=True)
    special = special_token_ids(tokenizer)
    texts = [tokenizer.convert_ids_to_tokens(i) for i in special]
    if not any(token and token in m["content"] for m in messages for token in texts):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return _ids_with_content_as_text(tokenizer, messages, special)


def _ids_with_content_as_text(tokenizer, messages: list[dict], special: set[int]) -> list[int]:
    """`prompt_ids` of a conversation whose content holds special-token text: the rendered text
    tokenized as usual, then each stretch between two of the template's own special tokens that
    holds such text tokenized again as plain text (what it would be were those tokens not special)."""
    text, spans = _rendered_with_content_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)

    def in_content(start: int) -> bool:
        return any(first <= start < end for first, end in spans)

    ids: list[int] = []
    stretch_start, stretch = 0, []  # the text since the last template special token, and its ids
    for token, (start, end) in [
        *zip(encoded["input_ids"], encoded["offset_mapping"]),
        (None, (len(text),) * 2),
    ]:
        if token is not None and (token not in special or in_content(start)):
            stretch.append(token)
            continue
        if any(t in special for t in stretch):  # forged: tokenize that stretch as text
            stretch = tokenizer(
                text[stretch_start:start], add_special_tokens=False, split_special_tokens=True
            )
            stretch = stretch["input_ids"]
        ids += stretch + ([token] if token is not None else [])
        stretch_start, stretch = end, []
    return ids


def _rendered_with_content_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt and where each message's content lies in it, found by rendering with a
    marker in place of each content (a content search could match the template's own text)."""
    from common.payloads import BadRequest

    def marker(i: int) -> str:
        return f"\ue000{i}\ue001"  # private-use characters: never in a template

    def render(conversation: list[dict]) -> str:
        return render_text(tokenizer, conversation, generation_prompt=True)

    text = render(messages)
    marked = render([{**m, "content": marker(i)} for i, m in enumerate(messages)])
    for transform in (lambda c: c, str.strip):  # templates insert content as it is, or trimmed
        pieces, spans, cursor, position = [], [], 0, 0
        for i, message in enumerate(messages):
            at = marked.find(marker(i), cursor)
            if at < 0:
                continue  # a template may leave a message out (Phi-3-mini's drops system messages)
            content = transform(message["content"])
            pieces.append(marked[cursor:at])
            position += at - cursor
            spans.append((position, position + len(content)))
            pieces.append(content)
            position += len(content)
            cursor = at + len(marker(i))
        if "".join(pieces) + marked[cursor:] == text:
            return text, spans
    raise BadRequest(
        "a message contains a special token's text, and this model's chat template changes content in a way "
        "that hides where the content lies; remove the special token text from the messages",
        param="messages",
    )


def fix_changing_inputs(template: str, today: date | None = None) -> tuple[str, dict[str, str]]:
    """The template with its time-dependent inputs fixed to `today` (default: the date now), and
    what was fixed ({'strftime_now(%d %b %Y)': '07 Dec 2026'}). A template already fixed, or with
    no such input, is returned unchanged (and what it had fixed)."""
    if template.startswith(FIXED_MARK):
        return template, fixed_inputs(template)
    formats = sorted({m["format"] for m in STRFTIME_CALL.finditer(template)})
    if not formats:
        return template, {}
    today = today or date.today()
    values = {fmt: today.strftime(fmt) for fmt in formats}
    # A macro of the same name shadows the renderer's strftime_now global: each format the
    # template asks for gets the date of training.
    branches = "".join(
        f"{'{%- if' if i == 0 else '{%- elif'} format == {fmt!r} -%}}{value}"
        for i, (fmt, value) in enumerate(values.items())
    )
    macro = f"{{%- macro strftime_now(format) -%}}{branches}{{%- endif -%}}{{%- endmacro -%}}"
    return f"{FIXED_MARK}\n{macro}\n{template}", {f"strftime_now({k})": v for k, v in values.items()}


def fixed_inputs(template: str | None) -> dict[str, str]:
    """What `fix_changing_inputs` fixed in `template` (empty for a template it did not touch)."""
    if not template or not template.startswith(FIXED_MARK):
        return {}
    macro = template.split("\n", 2)[1]
    pairs = re.findall(r"format == (['\"])(.*?)\1 -%}([^{]*)", macro)
    return {f"strftime_now({fmt})": value for _, fmt, value in pairs}
