"""The scoring contract, written once: request shapes, generation parameters and answers.

Standard library only: the Azure scoring script (deploy/scoring/score.py) and the Prompt flow
tools carry this file, and the local server, the endpoint client, deploy's chat and the
benchmarks import it. Three shapes, each answered in the shape it came in:

- `seedA`   {"input_data": ["text", ...], "params": {...}}                     -> ["answer", ...]
- `seedB`   {"input_data": {"input_string": [messages], "parameters": {...}}}  -> {"output": "answer"}
- `openai`  {"messages": [messages], "max_tokens": n, "temperature": t, ...}   -> chat.completion

Server side: `parse_request` validates a body into a `ChatRequest` (raising `BadRequest` that
says what was expected) and `format_response` shapes the answers. Client side:
`build_payload` and `parse_answer`. The generation-parameter rules (`generation_kwargs`) are
the same on both sides, so a client refuses what the server would refuse, before sending.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class Shape(enum.StrEnum):
    """A payload shape; the names are what configs and connections use (`payload=seedB`)."""

    openai = "openai"
    seedA = "seedA"
    seedB = "seedB"


# Generation parameters a request may carry (seed A's `params`, seed B's `parameters`, or
# top-level OpenAI fields). Anything else is a 400 that lists these.
GENERATION_PARAMS = ("max_new_tokens", "max_tokens", "temperature", "top_p", "do_sample", "stop")
# Shape-specific extras: seed A's HF-pipeline flag, OpenAI's bookkeeping fields.
SEED_A_EXTRAS = ("return_full_text",)
OPENAI_EXTRAS = ("model", "n", "stream", "user")
DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS_LIMIT = 4096
ROLES = ("system", "user", "assistant")

EXPECTED = (
    'expected one of: {"input_data": ["text", ...], "params": {...}} (seed A); '
    '{"input_data": {"input_string": [{"role": ..., "content": ...}, ...], "parameters": {...}}} '
    '(seed B); {"messages": [{"role": ..., "content": ...}, ...], "max_tokens": n, ...} (OpenAI)'
)
ANSWER_SHAPES = {
    Shape.openai: '{"choices": [{"message": {"content": "..."}}]}',
    Shape.seedA: '["answer", ...]',
    Shape.seedB: '{"output": "answer"}',
}


class BadRequest(ValueError):
    """The payload is not one this endpoint accepts; the message says what was expected."""


class UnexpectedAnswer(ValueError):
    """A response body is not the shape that was asked for."""


@dataclass
class ChatRequest:
    shape: Shape
    conversations: list[list[dict]]
    generate: dict[str, Any]  # keyword arguments for model.generate
    stop: list[str] = field(default_factory=list)
    return_full_text: bool = False


# ---------------------------------------------------------------- server side: requests


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"{where} must be a non-empty list of {{'role', 'content'}} messages; {EXPECTED}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRequest(f"{where}[{i}] must be an object with a string 'content'; got {message!r:.80}")
        if message.get("role") not in ROLES:
            raise BadRequest(
                f"{where}[{i}].role must be system, user or assistant; got {message.get('role')!r}"
            )
    if messages[-1]["role"] != "user":
        raise BadRequest(f"{where} must end with a user message (the turn to answer)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_keys(params: Any, where: str, allowed: tuple[str, ...]) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where} must be an object of generation parameters")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequest(f"{where}: unknown parameter(s) {unknown}; accepted: {', '.join(allowed)}")
    return params


def generation_kwargs(params: dict, where: str = "params") -> tuple[dict[str, Any], list[str]]:
    """Map request parameters to `model.generate` keyword arguments (and stop strings).

    OpenAI semantics for sampling: temperature 0 (the default) is greedy; a positive
    temperature samples unless `do_sample` says otherwise. `do_sample=true` with
    temperature 0 is a contradiction and rejected rather than guessed.
    """
    max_new = params.get("max_new_tokens")
    max_tokens = params.get("max_tokens")
    if max_new is not None and max_tokens is not None and max_new != max_tokens:
        raise BadRequest(f"{where}: max_new_tokens={max_new} and max_tokens={max_tokens} disagree; send one")
    max_new = max_new if max_new is not None else max_tokens
    max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= MAX_NEW_TOKENS_LIMIT:
        raise BadRequest(f"{where}: max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]")

    temperature = params.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise BadRequest(f"{where}: temperature must be a number >= 0")
    top_p = params.get("top_p", 1.0)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise BadRequest(f"{where}: top_p must be a number in (0, 1]")
    do_sample = params.get("do_sample", temperature > 0)
    if not isinstance(do_sample, bool):
        raise BadRequest(f"{where}: do_sample must be true or false")
    if do_sample and temperature == 0:
        raise BadRequest(f"{where}: do_sample=true needs a temperature > 0")

    kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p))

    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest(f"{where}: stop must be a string or a list of non-empty strings")
    return kwargs, stop


def parse_request(payload: Any) -> ChatRequest:
    """Recognise the payload's shape and validate it; raises BadRequest saying what was expected."""
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object; {EXPECTED}")
    if "messages" in payload:
        if "input_data" in payload:
            raise BadRequest(f"send either 'messages' or 'input_data', not both; {EXPECTED}")
        params = _check_keys(
            {k: v for k, v in payload.items() if k != "messages"}, "body", GENERATION_PARAMS + OPENAI_EXTRAS
        )
        if params.get("n", 1) != 1 or params.get("stream", False):
            raise BadRequest("body: only n=1 and stream=false are supported")
        kwargs, stop = generation_kwargs(params, "body")
        return ChatRequest(Shape.openai, [_check_messages(payload["messages"], "messages")], kwargs, stop)

    if "input_data" not in payload:
        raise BadRequest(f"no 'messages' or 'input_data' key; {EXPECTED}")
    input_data = payload["input_data"]
    if isinstance(input_data, list):
        unknown = sorted(set(payload) - {"input_data", "params"})
        if unknown:
            raise BadRequest(f"unknown top-level key(s) {unknown} beside input_data; {EXPECTED}")
        if not input_data or not all(isinstance(t, str) and t for t in input_data):
            raise BadRequest(f"input_data must be a non-empty list of non-empty strings (seed A); {EXPECTED}")
        params = dict(_check_keys(payload.get("params"), "params", GENERATION_PARAMS + SEED_A_EXTRAS))
        full = params.pop("return_full_text", False)
        if not isinstance(full, bool):
            raise BadRequest("params: return_full_text must be true or false")
        kwargs, stop = generation_kwargs(params, "params")
        conversations = [[{"role": "user", "content": text}] for text in input_data]
        return ChatRequest(Shape.seedA, conversations, kwargs, stop, return_full_text=full)
    if isinstance(input_data, dict):
        unknown = sorted(set(payload) - {"input_data"})
        unknown += sorted(set(input_data) - {"input_string", "parameters"})
        if unknown:
            raise BadRequest(f"unknown key(s) {unknown}; {EXPECTED}")
        if "input_string" not in input_data:
            raise BadRequest(f"input_data.input_string is missing (seed B); {EXPECTED}")
        params = _check_keys(input_data.get("parameters"), "input_data.parameters", GENERATION_PARAMS)
        kwargs, stop = generation_kwargs(params, "input_data.parameters")
        messages = _check_messages(input_data["input_string"], "input_data.input_string")
        return ChatRequest(Shape.seedB, [messages], kwargs, stop)
    raise BadRequest(f"input_data must be a list of strings or an object; {EXPECTED}")


# ---------------------------------------------------------------- server side: answers


def format_response(request: ChatRequest, answers: list[dict], model_name: str) -> Any:
    """Answers (`text`, `finish_reason`, `usage` each) in the shape the request came in."""
    if request.shape is Shape.seedA:
        if request.return_full_text:
            # As transformers' text-generation pipeline: the input text, then the continuation.
            return [f"{c[-1]['content']}\n{a['text']}" for c, a in zip(request.conversations, answers)]
        return [a["text"] for a in answers]
    if request.shape is Shape.seedB:
        return {"output": answers[0]["text"]}
    answer = answers[0]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer["text"]},
                "finish_reason": answer["finish_reason"],
            }
        ],
        "usage": answer["usage"],
    }


# ---------------------------------------------------------------- client side


@dataclass(frozen=True)
class GenerationParams:
    """What a client asks the model to do, checked by the server's own rules when made."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    do_sample: bool = False  # OpenAI semantics: a temperature > 0 samples anyway

    def __post_init__(self):
        try:
            generation_kwargs(self.as_parameters(), "generation parameters")
        except BadRequest as e:
            raise ValueError(str(e)) from None

    def as_parameters(self) -> dict[str, Any]:
        return {
            "max_new_tokens": int(self.max_new_tokens),
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "do_sample": bool(self.do_sample) or float(self.temperature) > 0,
        }


def build_payload(shape: Shape | str, messages: list[dict], params: GenerationParams) -> dict:
    """The request body for a payload shape."""
    shape = Shape(shape)
    generation = params.as_parameters()
    if shape is Shape.openai:
        # OpenAI names the length max_tokens and has no do_sample (temperature 0 is greedy).
        return {
            "messages": messages,
            "max_tokens": generation["max_new_tokens"],
            "temperature": generation["temperature"],
            "top_p": generation["top_p"],
        }
    if shape is Shape.seedB:
        return {"input_data": {"input_string": messages, "parameters": generation}}
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise ValueError(
            "payload seedA sends one prompt per request and cannot carry a system message or "
            "chat history; point the connection at payload=openai or payload=seedB "
            "(python -m flow.connect ... payload=openai)"
        )
    return {"input_data": [messages[0]["content"]], "params": generation}


def parse_answer(shape: Shape | str, body: object) -> str:
    """The assistant text in a decoded response body, or UnexpectedAnswer naming the expected shape."""
    shape = Shape(shape)
    try:
        if shape is Shape.openai:
            completion = body[0] if isinstance(body, list) and len(body) == 1 else body
            answer = completion["choices"][0]["message"]["content"]
        elif shape is Shape.seedB:
            answer = body["output"]
        else:
            answer = body[0]
    except (KeyError, IndexError, TypeError):
        answer = None
    if not isinstance(answer, str):
        raise UnexpectedAnswer(f"the endpoint's answer is not the {shape.value} shape {ANSWER_SHAPES[shape]}")
    return answer
