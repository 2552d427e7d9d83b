"""The local server's app, assembled from the routers and the middleware around one batched generator.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (routers/openai.py),
`POST /score` (routers/score.py), `GET /` and `GET /health` (routers/health.py). The model routes
need the key when one is set (middleware/auth.py); every route refuses credentials in the query
string (middleware/query_credentials.py); every error is answered in OpenAI's shape
(middleware/errors.py); one access-log line per request (middleware/access_log.py). The request
head deadline lives in uvicorn's protocol (middleware/header_deadline.py, set by server.py).

Hostile clients get a fast 4xx in OpenAI's error shape and everyone else is still served
(docs/serving-security.md has the table): a Host header must name this machine (400,
middleware/host.py), a request head must arrive within `header_timeout_s`, a body must be JSON
(415), arrive within `body_timeout_s` (408) and stay below `limits.max_body_bytes` (413, from
Content-Length before reading; refused bodies are drained, then the connection closes); then the checks of
`common.payloads` (bad JSON, NaN, deep nesting, lone surrogates, too many messages or characters:
400), the context (prompt + max_tokens, 400 naming both), the queue (503 + Retry-After; a
request holds at most `max_slots_per_request` slots) and the request timeout (504). A client
that goes away cancels its request and frees its slot.
"""

from __future__ import annotations

import contextlib

from fastapi import Depends, FastAPI

from common.payloads import RequestLimits
from deploy.config import ServerSettings
from deploy.serve.batching import BatchedGenerator
from deploy.serve.middleware.access_log import AccessLog
from deploy.serve.middleware.auth import bearer_key
from deploy.serve.middleware.errors import add_error_handlers
from deploy.serve.middleware.host import LoopbackHost
from deploy.serve.middleware.query_credentials import refuse_credentials_in_query
from deploy.serve.routers import health, openai, score
from deploy.serve.serving import ChatServing


def create_app(
    engine: BatchedGenerator,
    model_name: str,
    key: str | None = None,
    limits: RequestLimits | None = None,
    settings: ServerSettings | None = None,
) -> FastAPI:
    """The app around a batched generator; `key` (None: no auth) guards the model routes."""
    limits, settings = limits or RequestLimits(), settings or ServerSettings()
    app = FastAPI(
        title="finetune-phi",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=run_engine,
        dependencies=[Depends(refuse_credentials_in_query)],
    )
    app.state.serving = ChatServing(engine, model_name, limits, settings)
    app.add_middleware(LoopbackHost, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(AccessLog)  # added last: outermost, so a refused Host is logged too
    add_error_handlers(app)
    model_routes = [Depends(bearer_key(key))]
    app.include_router(health.router)
    app.include_router(openai.router, dependencies=model_routes)
    app.include_router(score.router, dependencies=model_routes)
    return app


@contextlib.asynccontextmanager
async def run_engine(app: FastAPI):
    """The batching engine's thread runs while the app does."""
    engine = app.state.serving.engine
    engine.start()
    try:
        yield
    finally:
        engine.close()
