"""The scoring script: Azure ML's `init()`/`run()` contract, and the model loading behind the local server.

The Azure managed online deployment runs it as its scoring script: azureml-inference-server-http
calls `init()` once, then `run(request)` per request with the raw HTTP request (`@rawhttp`), so
a body over the limit is refused before it is read. Azure's server runs one request at a time
per worker, so this script generates directly, one request after another; the local server
(deploy/serve/) loads the model with the same `ChatModel` and batches requests instead. Both
check requests with the same `common.payloads` rules and limits and render prompts with the same
`common.generation`. It imports only the standard library, torch, transformers, mlflow and the
neutral `common` package, which the Azure code snapshot carries beside it (deploy/azure/entities.py);
never the `deploy` package.

The payload shapes, their validation and answers are `common.payloads`. Generation does not
go through `pyfunc.predict`: measured on MLflow 3.15 and 3.17, the llm/v1/chat pyfunc drops
`max_new_tokens` and `do_sample` (not in its signature), ignores `params=` (no params schema)
and, since `do_sample` stays false, silently ignores `temperature` and `top_p`. The model and
tokenizer MLflow loads are used directly instead, through `common.generation` (the renderer
and generator training's evaluation uses), with the parameters mapped by
`common.payloads.generation_kwargs` and nothing dropped.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Azure's inference server (azmlinfsrv) puts the cwd and AML_APP_ROOT on sys.path, never this
# file's folder, which in the deployment's code snapshot holds `common/` beside this file
# (deploy/azure/entities.py:scoring_code_dir): add it, so `common` imports however the server is started.
# It also runs this file without registering it in sys.modules (importlib's
# spec_from_file_location + exec_module), so no @dataclass here: with string annotations,
# dataclasses looks the class's module up in sys.modules and the worker fails to boot
# (python/cpython gh-140704). Dataclasses live in `common`, which is imported normally.
if (Path(__file__).resolve().parent / "common").is_dir():
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import logging
import os
import threading
from typing import Any

from common.generation import Generator
from common.payloads import BadRequest, RequestLimits, format_response, parse_json, parse_request

log = logging.getLogger(__name__)


def find_mlflow_model(root: str | os.PathLike) -> str:
    """The MLflow model directory under `root` (AZUREML_MODEL_DIR nests it one or two levels)."""
    root = Path(root)
    if (root / "MLmodel").exists():
        return str(root)
    found = sorted(p.parent for p in root.rglob("MLmodel"))
    if not found:
        raise FileNotFoundError(f"no MLflow model (an MLmodel file) under {root}")
    return str(found[0])


class ChatModel(Generator):
    """The MLflow-logged transformers model and tokenizer, generating one request at a time.

    Requests are serialised with a lock: one model instance cannot generate for two
    callers at once, and on CPU a batch of one is what the cores can do anyway.
    """

    def __init__(self, model_uri: str):
        import mlflow.transformers
        import torch

        components = mlflow.transformers.load_model(model_uri, return_type="components")
        super().__init__(components["model"].eval(), components["tokenizer"])
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.model_uri = model_uri
        uri = str(model_uri)
        self.name = uri.removeprefix("models:/") if uri.startswith("models:/") else Path(uri.rstrip("/")).name
        self._lock = threading.Lock()

    def answer_prompts(self, prompts: list[list[int]], generate: dict, stop: list[str]) -> list[dict]:
        with self._lock:
            return super().answer_prompts(prompts, generate, stop)


class Scorer:
    """Payload in, (HTTP status, JSON body) out: the whole endpoint minus HTTP and auth."""

    def __init__(self, chat_model: ChatModel, limits: RequestLimits | None = None):
        self.chat_model = chat_model
        self.limits = chat_model.request_limits(limits)

    def handle(self, payload: Any) -> tuple[int, Any]:
        try:
            request = parse_request(payload, self.limits)
            max_new_tokens = request.generate["max_new_tokens"]  # prompt + answer must fit the context
            prompts = [self.chat_model.checked_prompt_ids(c, max_new_tokens) for c in request.conversations]
        except BadRequest as e:
            return e.status, e.body()
        answers = [self.chat_model.answer_prompts([p], request.generate, request.stop)[0] for p in prompts]
        return 200, format_response(request, answers, self.chat_model.name)


# ---------------------------------------------------------------- Azure ML's contract

try:  # Azure's inference server: run() then receives the raw (flask) request
    from azureml_inference_server_http.api.aml_request import rawhttp
except ImportError:  # not in this project's stack: tests call run() with a flask request themselves

    def rawhttp(run):
        return run


_scorer: Scorer | None = None


def init(model_uri: str | None = None) -> None:
    """Load the model once. On Azure the registered model is mounted at AZUREML_MODEL_DIR."""
    global _scorer
    model_uri = model_uri or find_mlflow_model(os.environ["AZUREML_MODEL_DIR"])
    log.info("loading %s", model_uri)
    _scorer = Scorer(ChatModel(model_uri))


def read_body(request, limit: int) -> bytes:
    """The body of a flask request, refused (413) above `limit` bytes: from Content-Length before
    reading, else by counting (a chunked body). Azure's server sets no limit (a 50 MB body was read)."""
    too_large = BadRequest(
        f"the body is larger than this endpoint takes ({limit} bytes)", code="request_too_large", status=413
    )
    if (request.content_length or 0) > limit:
        raise too_large
    chunks, size = [], 0
    while chunk := request.stream.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@rawhttp
def run(request):
    """One request, as the flask request azureml-inference-server-http hands over. Errors are
    4xx with OpenAI's error object, as on the local server."""
    if _scorer is None:
        raise RuntimeError("init() has not been called")
    try:
        status, body = _scorer.handle(parse_json(read_body(request, _scorer.limits.max_body_bytes)))
    except BadRequest as e:
        status, body = e.status, e.body()
    if status == 200:
        return body
    try:  # present in the serving image (azureml-inference-server-http), not needed elsewhere
        from azureml_inference_server_http.api.aml_response import AMLResponse
    except ImportError:
        return body
    return AMLResponse(body, status, json_str=True)  # json_str: it serialises `body` itself
