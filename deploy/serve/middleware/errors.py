"""Every error the local server answers, in OpenAI's error shape, mapped in one place.

- `BadRequest` (common.payloads: bad JSON, NaN, nesting, limits, the context; 401 without the
  key, 404 for another model, 408/413/415 for a body): its own status; a body refused unread
  closes the connection, so it is not read as the next request: after draining it (413, 415:
  middleware/body.py's lingering close), or at once (408: it stopped arriving);
- a route or method that does not exist: Starlette's 404 or 405;
- `QueueFull`: 503 with Retry-After; `GenerationLoopDied`: 503 (nothing can be generated);
- `RequestTimedOut`: 504 with `x-should-retry: false`, since a retry would redo the same long work;
- `GenerationFailed` (this request's generation failed): 500;
- anything else: 500 naming only the exception's type, the traceback in the server's log.
A stream that already answered 200 reports a failure as an error event instead (serving.py).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from common.payloads import BadRequest, error_body
from deploy.serve.batching import GenerationFailed, GenerationLoopDied, QueueFull
from deploy.serve.middleware.body import LingeringClose
from deploy.serve.serving import RequestTimedOut

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, code=None, param=None, type="invalid_request_error", headers=None
) -> Response:
    """OpenAI's error object; ASCII-escaped JSON, so no client text can make the answer unencodable."""
    return Response(json.dumps(error_body(message, type, param, code)), status, headers, "application/json")


async def refused(request: Request, e: BadRequest) -> Response:
    response = error_response(e.status, str(e), e.code, e.param)
    if e.status in (413, 415):  # refused before its body was read whole: drain it, then close
        serving = request.app.state.serving
        return LingeringClose(response, serving.limits.max_body_bytes, serving.settings.body_timeout_s)
    if e.status == 408:  # a body that stopped arriving must not stay on the connection as the next request
        response.headers["connection"] = "close"
    return response


async def no_such_route(request: Request, e: HTTPException) -> Response:  # 404 and 405
    message = f"{request.method} {request.url.path}: {e.detail}"
    return error_response(e.status_code, message, "not_found" if e.status_code == 404 else None)


async def busy(_, e: QueueFull) -> Response:
    headers = {"retry-after": "1"}
    return error_response(
        503, f"the server is busy ({e}); retry shortly", "queue_full", type="server_error", headers=headers
    )


async def cannot_generate(_, e: GenerationLoopDied) -> Response:
    return error_response(503, str(e), "generation_failed", type="server_error")


async def too_slow(_, e: RequestTimedOut) -> Response:
    headers = {"x-should-retry": "false"}  # the openai client would otherwise redo the same long work
    return error_response(504, str(e), "request_timeout", type="server_error", headers=headers)


async def generation_failed(_, e: GenerationFailed) -> Response:
    return error_response(500, str(e), "generation_failed", type="server_error")


async def crashed(_, e: Exception) -> Response:
    log.exception("request failed")
    return error_response(500, f"the server failed: {type(e).__name__}", type="server_error")


HANDLERS = {
    BadRequest: refused,
    HTTPException: no_such_route,
    QueueFull: busy,
    GenerationLoopDied: cannot_generate,  # a GenerationFailed: Starlette takes the most specific class
    RequestTimedOut: too_slow,
    GenerationFailed: generation_failed,
    Exception: crashed,
}


def add_error_handlers(app: FastAPI) -> None:
    for error, handler in HANDLERS.items():
        app.add_exception_handler(error, handler)
