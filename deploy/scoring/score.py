"""The scoring script: Azure ML's `init()`/`run()` contract, and the code behind the local server.

One module answers both: the Azure managed online deployment runs it as its scoring script
(azureml-inference-server-http calls `init()` once, then `run(raw_json)` per request), and
`deploy.local` calls the same `Scorer.handle` behind FastAPI. It therefore imports only the
standard library, torch, transformers and mlflow (what the serving image has), never the
`deploy` package.

Three payload shapes, answered in the shape they came in:
- seed A  {"input_data": ["text", ...], "params": {...}}                     -> ["answer", ...]
- seed B  {"input_data": {"input_string": [messages], "parameters": {...}}}  -> {"output": "answer"}
- OpenAI  {"messages": [messages], "max_tokens": n, "temperature": t, ...}   -> chat.completion

Generation does not go through `pyfunc.predict`: measured on MLflow 3.17, the llm/v1/chat
pyfunc drops `max_new_tokens` and `do_sample` (not in its signature), ignores `params=`
(no params schema) and, since `do_sample` stays false, silently ignores `temperature` and
`top_p`. The model and tokenizer MLflow loads are used directly instead, rendered exactly
as training's evaluation renders them (`apply_chat_template(add_generation_prompt=True)`),
with the generation parameters mapped by `generation_kwargs` and nothing dropped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Generation parameters a request may carry (seed A's `params`, seed B's `parameters`, or
# top-level OpenAI fields). Anything else is a 400 that lists these.
GENERATION_PARAMS = ("max_new_tokens", "max_tokens", "temperature", "top_p", "do_sample", "stop")
# Shape-specific extras: seed A's HF-pipeline flag, OpenAI's bookkeeping fields.
SEED_A_EXTRAS = ("return_full_text",)
OPENAI_EXTRAS = ("model", "n", "stream", "user")
DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS_LIMIT = 4096

EXPECTED = (
    'expected one of: {"input_data": ["text", ...], "params": {...}} (seed A); '
    '{"input_data": {"input_string": [{"role": ..., "content": ...}, ...], "parameters": {...}}} '
    '(seed B); {"messages": [{"role": ..., "content": ...}, ...], "max_tokens": n, ...} (OpenAI)'
)


class BadRequest(ValueError):
    """The payload is not one this endpoint accepts; the message says what was expected."""


@dataclass
class ChatRequest:
    shape: str  # "seed_a" | "seed_b" | "openai"
    conversations: list[list[dict]]
    generate: dict[str, Any]  # keyword arguments for model.generate
    stop: list[str] = field(default_factory=list)
    return_full_text: bool = False


# ---------------------------------------------------------------- request parsing


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"{where} must be a non-empty list of {{'role', 'content'}} messages; {EXPECTED}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise BadRequest(f"{where}[{i}] must be an object with a string 'content'; got {message!r:.80}")
        if message.get("role") not in ("system", "user", "assistant"):
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
        return ChatRequest("openai", [_check_messages(payload["messages"], "messages")], kwargs, stop)

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
        return ChatRequest("seed_a", conversations, kwargs, stop, return_full_text=full)
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
        return ChatRequest("seed_b", [messages], kwargs, stop)
    raise BadRequest(f"input_data must be a list of strings or an object; {EXPECTED}")


# ---------------------------------------------------------------- the model


def find_mlflow_model(root: str | os.PathLike) -> str:
    """The MLflow model directory under `root` (AZUREML_MODEL_DIR nests it one or two levels)."""
    root = Path(root)
    if (root / "MLmodel").exists():
        return str(root)
    found = sorted(p.parent for p in root.rglob("MLmodel"))
    if not found:
        raise FileNotFoundError(f"no MLflow model (an MLmodel file) under {root}")
    return str(found[0])


class ChatModel:
    """The MLflow-logged transformers model and tokenizer, generating one answer at a time.

    Requests are serialised with a lock: one model instance cannot generate for two
    callers at once, and on CPU a batch of one is what the cores can do anyway.
    """

    def __init__(self, model_uri: str):
        import mlflow.transformers
        import torch

        components = mlflow.transformers.load_model(model_uri, return_type="components")
        self.model = components["model"].eval()
        self.tokenizer = components["tokenizer"]
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.model_uri = model_uri
        uri = str(model_uri)
        self.name = uri.removeprefix("models:/") if uri.startswith("models:/") else Path(uri.rstrip("/")).name
        self._lock = threading.Lock()

    @property
    def eos_token_ids(self) -> list[int]:
        """Where an answer ends: the generation config's EOS ids (Phi-3.5: <|end|>, ...)."""
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        return sorted({eos} if isinstance(eos, int) else set(eos))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the prompt, rendered as training's evaluation renders it."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]

    def full_kwargs(self, generate: dict) -> dict:
        """Everything passed to model.generate besides the prompt."""
        return {**generate, "eos_token_id": self.eos_token_ids, "pad_token_id": self.tokenizer.pad_token_id}

    def answer(self, messages: list[dict], generate: dict, stop: list[str]) -> dict:
        import torch

        ids = self.prompt_ids(messages)
        kwargs = self.full_kwargs(generate)
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        input_ids = torch.tensor([ids], device=self.model.device)
        with self._lock, torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
        new = out[0, len(ids) :].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        # Stop strings end generation after the token containing them; the answer ends before.
        hit = [text.index(s) for s in stop if s in text]
        finish = "stop" if hit or (new and new[-1] in self.eos_token_ids) else "length"
        text = text[: min(hit)] if hit else text
        return {
            "text": text.strip(),
            "finish_reason": finish,
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(new),
                "total_tokens": len(ids) + len(new),
            },
        }


# ---------------------------------------------------------------- responses


def format_response(request: ChatRequest, answers: list[dict], model_name: str) -> Any:
    if request.shape == "seed_a":
        if request.return_full_text:
            # As transformers' text-generation pipeline: the input text, then the continuation.
            return [f"{c[-1]['content']}\n{a['text']}" for c, a in zip(request.conversations, answers)]
        return [a["text"] for a in answers]
    if request.shape == "seed_b":
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


class Scorer:
    """Payload in, (HTTP status, JSON body) out: the whole endpoint minus HTTP and auth."""

    def __init__(self, chat_model: ChatModel):
        self.chat_model = chat_model

    def handle(self, payload: Any) -> tuple[int, Any]:
        try:
            request = parse_request(payload)
        except BadRequest as e:
            return 400, {"error": str(e)}
        answers = [self.chat_model.answer(c, request.generate, request.stop) for c in request.conversations]
        return 200, format_response(request, answers, self.chat_model.name)

    def render(self, payload: Any) -> tuple[int, Any]:
        """What `handle` would feed the model, without generating: for the parity check."""
        try:
            request = parse_request(payload)
        except BadRequest as e:
            return 400, {"error": str(e)}
        return 200, {
            "prompt_token_ids": [self.chat_model.prompt_ids(c) for c in request.conversations],
            "generate_kwargs": self.chat_model.full_kwargs(request.generate),
            "stop": request.stop,
        }


# ---------------------------------------------------------------- Azure ML's contract

_scorer: Scorer | None = None


def init(model_uri: str | None = None) -> None:
    """Load the model once. On Azure the registered model is mounted at AZUREML_MODEL_DIR."""
    global _scorer
    model_uri = model_uri or find_mlflow_model(os.environ["AZUREML_MODEL_DIR"])
    log.info("loading %s", model_uri)
    _scorer = Scorer(ChatModel(model_uri))


def run(raw_data: str | bytes):
    """One request. Errors become 4xx with {"error": ...} as on the local server."""
    if _scorer is None:
        raise RuntimeError("init() has not been called")
    try:
        payload = json.loads(raw_data)
    except ValueError as e:
        status, body = 400, {"error": f"the body is not valid JSON ({e}); {EXPECTED}"}
    else:
        status, body = _scorer.handle(payload)
    if status == 200:
        return body
    try:  # present in the serving image (azureml-inference-server-http), not needed elsewhere
        from azureml_inference_server_http.api.aml_response import AMLResponse
    except ImportError:
        return body
    return AMLResponse(body, status, json_str=True)  # json_str: it serialises `body` itself
