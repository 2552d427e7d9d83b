"""The local server on 127.0.0.1: OpenAI's chat API and the Azure endpoint's /score, batched.

    python -m deploy target=local port=8000          # foreground, until Ctrl-C

Routes:
- `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (plain, or `stream: true`
  as server-sent events in OpenAI's chunk format): OpenAI's API, so the `openai` client,
  LiteLLM, LangChain or promptflow's OpenAI connection call the model unchanged
  (`base_url=http://127.0.0.1:8000/v1`, the endpoint key as `api_key`);
- `POST /score`: the three payload shapes Azure's scoring script (deploy/scoring/score.py) takes,
  answered as it answers them;
- `GET /` and `GET /health`: 200 {"status": "ok"}, or 503 {"status": "not ready", "reason"} while
  the queue is full, a generation step has run past the request timeout, or generation died.

Both model routes share one `deploy.batching.BatchedGenerator` (transformers' continuous
batching): concurrent requests are generated together and each is answered when it is done.
Payloads, limits and answers are `common.payloads`, prompts `common.generation`: what Azure's
score.py uses, so /score answers here as there.

Why FastAPI/uvicorn rather than azureml-inference-server-http (the server Azure runs score.py
in): the latter pins pydantic < 2.13 and cannot join this project's pinned stack, serves one
request at a time per worker, and has no key auth (Azure's front door adds that).

Hostile clients get a fast 4xx in OpenAI's error shape and everyone else is still served: a
request head must arrive within `header_timeout_s` (uvicorn has no such timer: a client sending
half its headers held a connection forever), a body within `body_timeout_s` (408) and below
`limits.max_body_bytes` (413, from Content-Length before reading); then the checks of
`common.payloads` (bad JSON, NaN, deep nesting, lone surrogates, too many messages or characters:
400), the context (prompt + max_tokens, 400 naming both), the queue (503 + Retry-After) and the
request timeout (504, `x-should-retry: false`: a retry would redo the same long work). A client
that goes away cancels its request and frees its slot.

Auth: when the environment variable named by `key_env` (default FINETUNE_PHI_ENDPOINT_KEY) is
set, the model routes need `Authorization: Bearer <key>`, as Azure managed endpoints do; health
routes stay open, like the probes Azure sends. The key is read at start-up and never logged:
uvicorn's access log (which prints query strings) is replaced by a line without the query, and a
credential in the query string is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import parse_qsl

import h11
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.generation import Generator
from common.paths import PROJECT_ROOT
from common.payloads import (
    BadRequest,
    ChatRequest,
    RequestLimits,
    error_body,
    format_response,
    parse_chat_completion,
    parse_json,
    parse_request,
)
from deploy.batching import BatchedGenerator, GenerationFailed, Job, QueueFull
from deploy.config import ServerSettings
from deploy.scoring.score import ChatModel

log = logging.getLogger(__name__)
access_log = logging.getLogger("deploy.access")

DEFAULT_KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"
# Query parameters that carry credentials elsewhere (Azure SAS `sig`, OAuth `code`/`token`, ...).
CREDENTIAL_QUERY_NAMES = {
    "key",
    "api_key",
    "api-key",
    "apikey",
    "token",
    "access_token",
    "code",
    "sig",
    "password",
}


def error_response(
    status: int, message: str, code=None, param=None, type="invalid_request_error", headers=None
) -> Response:
    """OpenAI's error object; ASCII-escaped JSON, so no client text can make the answer unencodable."""
    return Response(json.dumps(error_body(message, type, param, code)), status, headers, "application/json")


class AccessLog:
    """One line per request, without its query string (where credentials get sent) or headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 0

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            client = (scope.get("client") or ("-",))[0]
            elapsed_ms = (time.perf_counter() - started) * 1e3
            access_log.info(
                '%s "%s %s" %s %.0fms', client, scope["method"], scope["path"], status or "-", elapsed_ms
            )


def header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with a deadline for every request head, and JSON for its own 400s.

    uvicorn 0.54 times out idle keep-alive connections only between requests, and every byte
    received resets that timer: a client that trickles or stalls its headers holds a connection
    forever. This timer starts when a connection opens or a response ends, and only a complete
    request head stops it. (uvicorn internals: uvicorn is pinned and tests/deploy catch a change.)
    """

    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._head_deadline = self.loop.call_later(timeout_s, self._close_without_head)

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle and self._head_deadline is not None:  # a whole head arrived
                self._head_deadline.cancel()
                self._head_deadline = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._head_deadline is None:
                self._head_deadline = self.loop.call_later(timeout_s, self._close_without_head)

        def connection_lost(self, exc):
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)

        def _close_without_head(self) -> None:
            self._head_deadline = None
            if self.cycle is None or self.cycle.response_complete:  # still waiting for a request head
                log.warning("closed a connection that sent no complete request head within %g s", timeout_s)
                self.transport.close()

        def send_400_response(self, msg: str) -> None:  # h11 refused the request: same shape as ours
            body = json.dumps(error_body(msg, code="bad_http_request")).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (
                h11.Response(status_code=400, headers=headers),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return HeaderDeadlineProtocol


def create_app(
    engine: BatchedGenerator,
    model_name: str,
    key: str | None = None,
    limits: RequestLimits | None = None,
    settings: ServerSettings | None = None,
) -> FastAPI:
    """The app around a batched generator; `key` (None: no auth) guards the model routes."""
    limits, settings = limits or RequestLimits(), settings or ServerSettings()
    generator: Generator = engine.generator

    @contextlib.asynccontextmanager
    async def lifespan(_):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    def no_credentials_in_query(request: Request) -> None:
        if any(name.lower() in CREDENTIAL_QUERY_NAMES for name, _ in parse_qsl(request.url.query)):
            raise BadRequest(
                "credentials are not accepted in the query string (URLs end up in logs); "
                "send the header `Authorization: Bearer <endpoint key>`",
                code="credential_in_query",
            )

    def authorised(request: Request) -> None:
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise BadRequest(
                "missing or wrong key: send the header `Authorization: Bearer <endpoint key>`",
                code="invalid_api_key",
                status=401,
            )

    app = FastAPI(
        title="finetune-phi",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        dependencies=[Depends(no_credentials_in_query)],
    )
    app.add_middleware(AccessLog)
    model_card = {
        "id": model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "finetune-phi",
    }

    @app.exception_handler(BadRequest)
    async def refused(_, e: BadRequest):
        # A body refused unread (413, 408) must not stay on the connection as the next request.
        headers = {"connection": "close"} if e.status in (408, 413) else None
        return error_response(e.status, str(e), e.code, e.param, headers=headers)

    @app.exception_handler(HTTPException)
    async def no_such_route(request: Request, e: HTTPException):  # 404 and 405
        message = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(e.status_code, message, "not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def crashed(_, e: Exception):
        log.exception("request failed")
        return error_response(500, f"the server failed: {type(e).__name__}", type="server_error")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise BadRequest(
                f"the body has {declared} bytes; this server takes at most {limits.max_body_bytes}",
                code="request_too_large",
                status=413,
            )
        chunks, size = [], 0
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                async for chunk in request.stream():  # chunked bodies have no Content-Length: count
                    size += len(chunk)
                    if size > limits.max_body_bytes:
                        raise BadRequest(
                            f"the body has more than {limits.max_body_bytes} bytes, the most this server takes",
                            code="request_too_large",
                            status=413,
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise BadRequest(
                f"the body did not arrive within {settings.body_timeout_s:g} s",
                code="request_timeout",
                status=408,
            ) from None
        return b"".join(chunks)

    async def submit(chat: ChatRequest) -> list[Job]:
        max_new_tokens = chat.generate["max_new_tokens"]
        # Tokenizing is bounded by the character limit, and kept off the event loop all the same.
        prompts = await run_in_threadpool(
            lambda: [generator.checked_prompt_ids(c, max_new_tokens) for c in chat.conversations]
        )
        jobs: list[Job] = []
        try:
            for prompt in prompts:
                jobs.append(engine.submit(prompt, chat.generate, chat.stop, stream=chat.stream))
        except (QueueFull, GenerationFailed):
            for job in jobs:
                job.cancel()
            raise
        return jobs

    async def answers(request: Request, jobs: list[Job]) -> list[dict] | None:
        """Every job's answer, or None if the client went away first (its jobs are cancelled)."""

        async def client_gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        done = asyncio.ensure_future(
            asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), settings.request_timeout_s)
        )
        gone = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
            return done.result() if done.done() else None
        finally:
            done.cancel()
            gone.cancel()
            for job in jobs:
                job.cancel()  # no-op for finished ones

    too_slow = (
        f"the answer was not ready within the request timeout ({settings.request_timeout_s:g} s); ask for fewer "
        "max_tokens or retry when the server is less busy"
    )

    async def respond(request: Request, chat: ChatRequest) -> Response:
        """Generate the request's answers in the shape it came in (plain, or a stream of events)."""
        try:
            jobs = await submit(chat)
        except QueueFull as e:
            headers = {"retry-after": "1"}
            return error_response(
                503,
                f"the server is busy ({e}); retry shortly",
                "queue_full",
                type="server_error",
                headers=headers,
            )
        except GenerationFailed as e:
            return error_response(503, str(e), "generation_failed", type="server_error")
        if chat.stream:
            return StreamingResponse(
                events(jobs[0], chat), media_type="text/event-stream", headers={"cache-control": "no-cache"}
            )
        try:
            result = await answers(request, jobs)
        except TimeoutError:  # x-should-retry: the openai client would otherwise redo the same long work
            headers = {"x-should-retry": "false"}
            return error_response(504, too_slow, "request_timeout", type="server_error", headers=headers)
        except GenerationFailed as e:
            return error_response(500, str(e), "generation_failed", type="server_error")
        if result is None:
            return Response(status_code=499)  # the client went away: nobody reads this, the access log does
        return JSONResponse(format_response(chat, result, model_name))

    async def events(job: Job, chat: ChatRequest):
        """OpenAI's chunks as server-sent events; Starlette cancels this when the client goes away."""
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list, **extra) -> str:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "system_fingerprint": None,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n"

        def delta(content: dict, finish_reason: str | None = None) -> str:
            return chunk([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}])

        try:
            yield delta({"role": "assistant", "content": ""})
            async with asyncio.timeout(settings.request_timeout_s):
                async for piece in job.deltas():
                    yield delta({"content": piece})
            yield delta({}, job.answer["finish_reason"])
            if chat.include_usage:
                yield chunk([], usage=job.answer["usage"])
            yield "data: [DONE]\n\n"
        except TimeoutError:  # the 200 is sent: an error event, which the openai client raises as APIError
            yield f"data: {json.dumps(error_body(too_slow, 'server_error', code='request_timeout'))}\n\n"
        except GenerationFailed as e:
            yield f"data: {json.dumps(error_body(str(e), 'server_error', code='generation_failed'))}\n\n"
        finally:
            job.cancel()

    @app.get("/")
    @app.get("/health")
    def health():
        reason = engine.not_ready_reason(settings.request_timeout_s)
        if reason:
            return JSONResponse({"status": "not ready", "reason": reason}, 503, {"retry-after": "1"})
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models():
        return {"object": "list", "data": [model_card]}

    def served(model_id: str) -> None:
        if model_id not in ("", model_name):  # none (or the LLM tool's empty default): the one served
            raise BadRequest(
                f"The model `{model_id}` does not exist; this server serves `{model_name}`",
                param="model",
                code="model_not_found",
                status=404,
            )

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorised)])
    def model(model_id: str):
        served(model_id)
        return model_card

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def chat_completions(request: Request):
        chat = parse_chat_completion(parse_json(await read_body(request)), limits)
        served(chat.model)
        return await respond(request, chat)

    @app.post("/score", dependencies=[Depends(authorised)])
    async def score(request: Request):
        return await respond(request, parse_request(parse_json(await read_body(request)), limits))

    return app


def endpoint_key(key_env: str, environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(key_env) or None


def serve(
    chat_model: ChatModel,
    limits: RequestLimits,
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    key_env: str = DEFAULT_KEY_ENV,
) -> None:
    """Serve in the foreground until interrupted."""
    import torch
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"host={host!r}: the local server binds loopback only (127.0.0.1)")
    if settings.torch_threads and chat_model.model.device.type == "cpu":
        torch.set_num_threads(settings.torch_threads)  # before the generation thread starts: it inherits this
    limits = chat_model.request_limits(limits)
    engine = BatchedGenerator(chat_model, settings.max_batch, settings.max_queue, settings.kv_cache_tokens)
    key = endpoint_key(key_env)
    print(
        f"serving {chat_model.name} on http://{host}:{port}/v1 (OpenAI API) and /score "
        f"({'key auth from $' + key_env if key else 'no auth: $' + key_env + ' is not set'}); "
        f"context {chat_model.context_tokens} tokens, prompts up to {limits.max_prompt_chars} characters, "
        f"bodies up to {limits.max_body_bytes} bytes; Ctrl-C stops it",
        flush=True,
    )
    config = uvicorn.Config(
        create_app(engine, chat_model.name, key, limits, settings),
        host=host,
        port=port,
        http=header_deadline_protocol(settings.header_timeout_s),
        access_log=False,  # it prints query strings; AccessLog writes ours
        log_level="info",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the scoring server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the scoring server at {url} was not healthy after {timeout:.0f} s")


@contextlib.contextmanager
def serve_in_background(
    model_uri: str,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    overrides: tuple[str, ...] = (),
    timeout: float = 300,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run `python -m deploy target=local` as a subprocess on a free loopback port; yield
    its base URL (`http://127.0.0.1:PORT`) once /health answers, then stop it by its pid.

    `model_uri`: anything `model.uri` takes (models:/NAME/VERSION, models:/NAME@ALIAS, a
    local MLflow model directory). `env` is added to this process's environment (e.g.
    MLFLOW_TRACKING_URI, FINETUNE_PHI_ENDPOINT_KEY). The server's output goes to `log_path`
    (default: a temporary file, removed with the server), whose tail is raised with the error
    if it fails to start.
    """
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="finetune-phi-serve-"))
    log_path = log_path or workdir / "server.log"
    command = [
        sys.executable,
        "-m",
        "deploy",
        "target=local",
        f"port={port}",
        f"model.uri={model_uri}",
        f"hydra.run.dir={workdir}",
        *overrides,
    ]
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},  # the log is current while it runs
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                wait_for_health(url, proc, timeout)
            except (RuntimeError, TimeoutError) as e:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{e}; command: {' '.join(command)}\n--- server log tail ---\n{tail}"
                ) from e
            yield url
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)
