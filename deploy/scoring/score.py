"""The scoring script: Azure ML's `init()`/`run()` contract, and the code behind the local server.

One module answers both: the Azure managed online deployment runs it as its scoring script
(azureml-inference-server-http calls `init()` once, then `run(raw_json)` per request), and
`deploy.local` calls the same `Scorer.handle` behind FastAPI. It imports only the standard
library, torch, transformers, mlflow and the neutral `common` package (the payload contract
and generation), which the Azure code snapshot carries beside it (deploy/azureml.py); never
the `deploy` package.

The payload shapes, their validation and answers are `common.payloads`. Generation does not
go through `pyfunc.predict`: measured on MLflow 3.17, the llm/v1/chat pyfunc drops
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
# (deploy/azureml.py:scoring_code_dir): add it, so `common` imports however the server is started.
# It also runs this file without registering it in sys.modules (importlib's
# spec_from_file_location + exec_module), so no @dataclass here: with string annotations,
# dataclasses looks the class's module up in sys.modules and the worker fails to boot
# (python/cpython gh-140704). Dataclasses live in `common`, which is imported normally.
if (Path(__file__).resolve().parent / "common").is_dir():
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import json
import logging
import os
import threading
from typing import Any

from common.generation import Generator
from common.payloads import EXPECTED, BadRequest, format_response, parse_request

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

    def answer_batch(self, conversations: list[list[dict]], generate: dict, stop: list[str]) -> list[dict]:
        with self._lock:
            return super().answer_batch(conversations, generate, stop)


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
