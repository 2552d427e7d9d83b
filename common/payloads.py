"""The scoring contract, written once: request shapes, generation parameters and answers.

Standard library only: the Azure scoring script (deploy/scoring/score.py) and the Prompt flow
tools carry this file, and the local server, the endpoint client, deploy's chat and the
benchmarks import it. Three shapes, each answered in the shape it came in:

- `seedA`   {"input_data": ["text", ...], "params": {...}}                     -> ["answer", ...]
- `seedB`   {"input_data": {"input_string": [messages], "parameters": {...}}}  -> {"output": "answer"}
- `openai`  {"messages": [messages], "max_tokens": n, "temperature": t, ...}   -> chat.completion

Server side: `parse_json` decodes a body, `parse_request` validates it into a `ChatRequest`
(raising `BadRequest` that says what was expected) and `format_response` shapes the answers;
`parse_chat_completion` does the same for the OpenAI API's own route (/v1/chat/completions,
with OpenAI's defaults). Client side: `build_payload` and `parse_answer`. The
generation-parameter rules (`generation_kwargs`) are the same on both sides, so a client
refuses what the server would refuse, before sending.

Hostile input is refused here, once for both servers (deploy/serve/ and Azure's score.py),
before anything is tokenized: bodies above `RequestLimits.max_body_bytes`, NaN/Infinity,
nesting deeper than the interpreter's recursion limit, lone surrogates, too many messages or
prompts, and prompts with more characters than the model's context can hold. Every client
error has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}` (`error_body`).
"""

from __future__ import annotations

import enum
import json
import math
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
MAX_STOP = 4  # stop strings per request, as OpenAI
# Characters in one stop string: a stream holds this much back, and the scoring script looks for
# stop strings in the last (4 x this) tokens' text at every step.
MAX_STOP_CHARS = 256
# Below this a positive temperature overflows the sampling step (logits / temperature reach inf,
# softmax gives NaN, torch.multinomial raises): 0.01 keeps logits up to 655 finite even in float16.
MIN_TEMPERATURE = 0.01
ROLES = ("system", "user", "assistant")
# OpenAI's `developer` role (o1 and later) is the system message under another name.
ROLE_ALIASES = {"developer": "system"}

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
    """A request this endpoint refuses (a 4xx, 400 unless `status` says otherwise); the message says
    what was expected, `param` names the offending field and `code` is OpenAI's error code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status

    def body(self) -> dict:
        return error_body(str(self), param=self.param, code=self.code)


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    """OpenAI's error object, the one shape of every error answer (the openai client reads it)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class RequestLimits:
    """What one request may carry; the servers check it before tokenizing anything.

    Also the Hydra schema of the local server's `limits` (conf/deploy/target/local.yaml)."""

    max_body_bytes: int = 4 * 2**20  # larger bodies: 413, refused from Content-Length before reading
    max_messages: int = 256  # messages in one conversation
    max_prompts: int = 16  # seed A prompts in one request
    # Characters in one conversation's contents. null: the model's context x its longest token
    # (common.generation.Generator.max_prompt_chars), above which a prompt cannot fit.
    max_prompt_chars: int | None = None


DEFAULT_LIMITS = RequestLimits()


class UnexpectedAnswer(ValueError):
    """A response body is not the shape that was asked for."""


@dataclass
class ChatRequest:
    shape: Shape
    conversations: list[list[dict]]
    generate: dict[str, Any]  # keyword arguments for model.generate
    stop: list[str] = field(default_factory=list)
    return_full_text: bool = False
    model: str = ""  # OpenAI's `model`, as sent
    stream: bool = False  # /v1/chat/completions only: answer as server-sent events
    include_usage: bool = False  # ... with a last chunk carrying `usage`


# ---------------------------------------------------------------- server side: requests


def parse_json(body: bytes) -> Any:
    """The decoded body. Refuses what Python's json accepts but no client should send: NaN and
    Infinity (`parse_constant`), numbers that overflow to inf such as 1e999 (`parse_float`; they
    never reach parse_constant), and nesting deeper than the interpreter's recursion limit
    (RecursionError, raised at once by the C scanner, even for a million brackets)."""
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest("the body is nested too deeply to be a request") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError (not UTF-8), NaN/Infinity
        raise BadRequest(f"the body is not valid JSON ({e}); {EXPECTED}") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:30]} is out of range; send a finite number")
    return value


def _text(value: Any, where: str, non_empty: bool = False) -> str:
    """A string that can be encoded: json.loads accepts lone surrogates ("\\ud800"), tokenizers raise on them."""
    if not isinstance(value, str) or (non_empty and not value):
        raise BadRequest(f"{where} must be a {'non-empty ' if non_empty else ''}string", param=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(
            f"{where} contains a lone surrogate (\\u{ord(value[e.start]):04x} at {e.start}); send valid Unicode",
            param=where,
        ) from None
    return value


def _check_length(texts: list[str], where: str, limits: RequestLimits) -> None:
    chars = sum(map(len, texts))
    if limits.max_prompt_chars is not None and chars > limits.max_prompt_chars:
        raise BadRequest(
            f"{where} has {chars} characters; this model's context holds at most "
            f"{limits.max_prompt_chars} (its context length x its longest token). Shorten the prompt",
            param=where,
            code="context_length_exceeded",
        )


def _check_messages(messages: Any, where: str, limits: RequestLimits) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            f"{where} must be a non-empty list of {{'role', 'content'}} messages; {EXPECTED}", param=where
        )
    if len(messages) > limits.max_messages:
        raise BadRequest(
            f"{where} has {len(messages)} messages; at most {limits.max_messages} are accepted", param=where
        )
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"{where}[{i}] must be an object with 'role' and 'content'; got {message!r:.80}",
                param=f"{where}[{i}]",
            )
        role = ROLE_ALIASES.get(message.get("role"), message.get("role"))
        if role not in ROLES:
            raise BadRequest(
                f"{where}[{i}].role must be system, developer, user or assistant; got {message.get('role')!r:.40}",
                param=f"{where}[{i}].role",
            )
        checked.append({"role": role, "content": _content(message.get("content"), f"{where}[{i}].content")})
    if checked[-1]["role"] != "user":
        raise BadRequest(f"{where} must end with a user message (the turn to answer)", param=where)
    _check_length([m["content"] for m in checked], where, limits)
    return checked


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of text parts (`[{"type": "text", "text": ...}]`,
    joined with newlines as vLLM joins them). Other parts (images, audio, files) are refused."""
    if isinstance(content, str):
        return _text(content, where)
    if not isinstance(content, list) or not content:
        raise BadRequest(
            f"{where} must be a string or a non-empty list of {{'type': 'text', 'text': ...}} parts",
            param=where,
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or set(part) != {"type", "text"}:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise BadRequest(
                f"{where}[{j}]: only text parts {{'type': 'text', 'text': ...}} are supported; got {kind!r:.40}",
                param=f"{where}[{j}]",
                code="unsupported_content",
            )
        texts.append(_text(part["text"], f"{where}[{j}].text"))
    return "\n".join(texts)


def check_context(prompt_tokens: int, max_new_tokens: int, context: int) -> None:
    """The prompt and the answer must fit the model's context (OpenAI's wording and code)."""
    if prompt_tokens + max_new_tokens > context:
        raise BadRequest(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_new_tokens} tokens ({prompt_tokens} in the messages, {max_new_tokens} in "
            "the completion). Please reduce the length of the messages or the completion (max_tokens).",
            param="messages",
            code="context_length_exceeded",
        )


def _check_keys(params: Any, where: str, allowed: tuple[str, ...]) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where} must be an object of generation parameters", param=where)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadRequest(
            f"{where}: unknown parameter(s) {unknown}; accepted: {', '.join(allowed)}",
            param=unknown[0],
            code="unknown_parameter",
        )
    return params


def generation_kwargs(params: dict, where: str = "params") -> tuple[dict[str, Any], list[str]]:
    """Map request parameters to `model.generate` keyword arguments (and stop strings).

    OpenAI semantics for sampling: temperature 0 (the default here; /v1 sends OpenAI's 1) is
    greedy; a positive temperature samples unless `do_sample` says otherwise. `do_sample=true`
    with temperature 0 is a contradiction and rejected rather than guessed.
    """
    max_new = params.get("max_new_tokens")
    max_tokens = params.get("max_tokens")
    if max_new is not None and max_tokens is not None and max_new != max_tokens:
        raise BadRequest(
            f"{where}: max_new_tokens={max_new} and max_tokens={max_tokens} disagree; send one",
            param="max_tokens",
        )
    name = "max_new_tokens" if max_new is not None else "max_tokens"
    max_new = max_new if max_new is not None else max_tokens
    max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= MAX_NEW_TOKENS_LIMIT:
        raise BadRequest(f"{where}: {name} must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]", param=name)

    temperature = params.get("temperature", 0.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= 2)
    ):
        raise BadRequest(
            f"{where}: temperature must be 0 (greedy) or a number in [{MIN_TEMPERATURE}, 2]; got {temperature!r:.30}",
            param="temperature",
        )
    top_p = params.get("top_p", 1.0)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise BadRequest(f"{where}: top_p must be a number in (0, 1]", param="top_p")
    do_sample = params.get("do_sample", temperature > 0)
    if not isinstance(do_sample, bool):
        raise BadRequest(f"{where}: do_sample must be true or false", param="do_sample")
    if do_sample and temperature == 0:
        raise BadRequest(f"{where}: do_sample=true needs a temperature > 0", param="do_sample")

    kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=float(temperature), top_p=float(top_p))

    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP:
        raise BadRequest(
            f"{where}: stop must be a string or a list of at most {MAX_STOP} strings", param="stop"
        )
    stop = [_text(s, "stop", non_empty=True) for s in stop]
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise BadRequest(
            f"{where}: a stop string has {max(map(len, stop))} characters; at most {MAX_STOP_CHARS} are accepted",
            param="stop",
        )
    return kwargs, stop


def parse_request(payload: Any, limits: RequestLimits = DEFAULT_LIMITS) -> ChatRequest:
    """Recognise the payload's shape (/score) and validate it; raises BadRequest saying what was expected."""
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object; {EXPECTED}")
    if "messages" in payload:
        if "input_data" in payload:
            raise BadRequest(f"send either 'messages' or 'input_data', not both; {EXPECTED}")
        params = _check_keys(
            {k: v for k, v in payload.items() if k != "messages"}, "body", GENERATION_PARAMS + OPENAI_EXTRAS
        )
        if params.get("n", 1) != 1 or params.get("stream", False):
            raise BadRequest(
                "body: only n=1 and stream=false are supported here; stream from /v1/chat/completions",
                param="stream" if params.get("stream") else "n",
            )
        kwargs, stop = generation_kwargs(params, "body")
        messages = _check_messages(payload["messages"], "messages", limits)
        return ChatRequest(Shape.openai, [messages], kwargs, stop)

    if "input_data" not in payload:
        raise BadRequest(f"no 'messages' or 'input_data' key; {EXPECTED}")
    input_data = payload["input_data"]
    if isinstance(input_data, list):
        unknown = sorted(set(payload) - {"input_data", "params"})
        if unknown:
            raise BadRequest(
                f"unknown top-level key(s) {unknown} beside input_data; {EXPECTED}", param=unknown[0]
            )
        if not input_data:
            raise BadRequest(f"input_data must be a non-empty list of non-empty strings (seed A); {EXPECTED}")
        if len(input_data) > limits.max_prompts:
            raise BadRequest(
                f"input_data has {len(input_data)} prompts; at most {limits.max_prompts} per request",
                param="input_data",
            )
        texts = [_text(t, f"input_data[{i}]", non_empty=True) for i, t in enumerate(input_data)]
        for i, text in enumerate(texts):
            _check_length([text], f"input_data[{i}]", limits)
        params = dict(_check_keys(payload.get("params"), "params", GENERATION_PARAMS + SEED_A_EXTRAS))
        full = params.pop("return_full_text", False)
        if not isinstance(full, bool):
            raise BadRequest("params: return_full_text must be true or false", param="return_full_text")
        kwargs, stop = generation_kwargs(params, "params")
        conversations = [[{"role": "user", "content": text}] for text in texts]
        return ChatRequest(Shape.seedA, conversations, kwargs, stop, return_full_text=full)
    if isinstance(input_data, dict):
        unknown = sorted(set(payload) - {"input_data"})
        unknown += sorted(set(input_data) - {"input_string", "parameters"})
        if unknown:
            raise BadRequest(f"unknown key(s) {unknown}; {EXPECTED}", param=unknown[0])
        if "input_string" not in input_data:
            raise BadRequest(f"input_data.input_string is missing (seed B); {EXPECTED}")
        params = _check_keys(input_data.get("parameters"), "input_data.parameters", GENERATION_PARAMS)
        kwargs, stop = generation_kwargs(params, "input_data.parameters")
        messages = _check_messages(input_data["input_string"], "input_data.input_string", limits)
        return ChatRequest(Shape.seedB, [messages], kwargs, stop)
    raise BadRequest(f"input_data must be a list of strings or an object; {EXPECTED}")


# OpenAI's /v1/chat/completions parameters (openai-python's completion_create_params): what a
# server without tools, logprobs or per-request seeds can honour, and what it must refuse.
CHAT_COMPLETION_PARAMS = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "stream", "stream_options", "n", "user", "presence_penalty", "frequency_penalty", "logprobs",
    "response_format", "store", "metadata", "parallel_tool_calls",
)  # fmt: skip
UNSUPPORTED_PARAMS = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "logit_bias": "logit_bias",
    "top_logprobs": "logprobs",
    "audio": "audio",
    "modalities": "other modalities",
    "prediction": "predicted outputs",
    "reasoning_effort": "reasoning effort",
    "service_tier": "service tiers",
    "web_search_options": "web search",
    "seed": "per-request seeds (continuous batching samples from one generator)",
}
# Accepted only at the value that changes nothing (None is always accepted: the parameter's default).
NEUTRAL_VALUES = {
    "n": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logprobs": (False,),
    "store": (False,),
    "response_format": ({"type": "text"},),
}


def parse_chat_completion(payload: Any, limits: RequestLimits = DEFAULT_LIMITS) -> ChatRequest:
    """A /v1/chat/completions body with OpenAI's semantics: temperature defaults to 1 (it samples),
    `max_completion_tokens` or `max_tokens`, `stream` and `stream_options.include_usage`."""
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object with `model` and `messages`")
    for name in payload:
        if name in UNSUPPORTED_PARAMS:
            raise BadRequest(
                f"{name}: {UNSUPPORTED_PARAMS[name]} is not supported by this server",
                param=name,
                code="unsupported_parameter",
            )
        if name not in CHAT_COMPLETION_PARAMS:
            raise BadRequest(
                f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter"
            )
    for name, neutral in NEUTRAL_VALUES.items():
        if payload.get(name) is not None and payload[name] not in neutral:
            raise BadRequest(
                f"{name}={payload[name]!r:.40} is not supported; send {neutral[0]!r} or leave it out",
                param=name,
                code="unsupported_value",
            )
    model = _text(payload.get("model") or "", "model")
    if payload.get("user") is not None:
        _text(payload["user"], "user")
    stream = payload.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", param="stream")
    options = payload.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise BadRequest("stream_options must be an object, sent with stream=true", param="stream_options")
    include_usage = (options or {}).get("include_usage") or False
    if not isinstance(include_usage, bool):
        raise BadRequest("stream_options.include_usage must be true or false", param="stream_options")

    max_tokens, max_completion = payload.get("max_tokens"), payload.get("max_completion_tokens")
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise BadRequest("max_tokens and max_completion_tokens disagree; send one", param="max_tokens")
    params = {
        "max_tokens": max_completion if max_completion is not None else max_tokens,
        "temperature": 1.0 if payload.get("temperature") is None else payload["temperature"],
        "top_p": 1.0 if payload.get("top_p") is None else payload["top_p"],
        "stop": payload.get("stop"),
    }
    kwargs, stop = generation_kwargs(params, "body")
    messages = _check_messages(payload.get("messages"), "messages", limits)
    return ChatRequest(
        Shape.openai, [messages], kwargs, stop, model=model, stream=stream, include_usage=include_usage
    )


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
