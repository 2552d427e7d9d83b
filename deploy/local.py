"""The local scoring server: the Azure endpoint's routes and contracts on 127.0.0.1.

    python -m deploy target=local port=8000          # foreground, until Ctrl-C

Routes: `POST /score` (the scoring script's `Scorer.handle`, the same code the Azure
deployment runs), `GET /` and `GET /health` (200 {"status": "ok"} once the model is loaded).

Why FastAPI/uvicorn rather than azureml-inference-server-http (the server Azure runs
score.py in): the latter pins pydantic < 2.13 and cannot join this project's pinned stack
(pydantic 2.14), and it has no key auth (Azure's front door adds that). FastAPI is already
pinned; it calls the very same `score.py`, so payload handling, rendering, generation and
error messages are shared; only HTTP plumbing and the bearer-key check live here.

Auth: when the environment variable named by `key_env` (default FINETUNE_PHI_ENDPOINT_KEY)
is set, /score needs `Authorization: Bearer <key>`, as Azure managed endpoints
do. Health routes stay open, like the probes Azure sends to the container. The key is read
from the environment at start-up and never logged.
"""

from __future__ import annotations

import contextlib
import hmac
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
from collections.abc import Iterator, Mapping
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from common.paths import PROJECT_ROOT
from common.payloads import BadRequest, error_body, parse_json
from deploy.scoring.score import Scorer

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"


def create_app(scorer: Scorer, key: str | None = None):
    """The FastAPI app around a loaded scorer; `key` (None: no auth) guards the model routes."""
    app = FastAPI(title="finetune-phi scoring", docs_url=None, redoc_url=None, openapi_url=None)

    def unauthorised(request: Request) -> JSONResponse | None:
        if key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode()):
            return None
        return JSONResponse(
            error_body(
                "missing or wrong key: send the header `Authorization: Bearer <endpoint key>`",
                code="invalid_api_key",
            ),
            status_code=401,
        )

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        if denied := unauthorised(request):
            return denied
        try:
            payload = parse_json(await request.body())
        except BadRequest as e:
            return JSONResponse(e.body(), status_code=e.status)
        try:
            status, body = await run_in_threadpool(scorer.handle, payload)
        except Exception as e:  # a model failure, not the client's: 500, with the reason
            log.exception("scoring failed")
            return JSONResponse(
                error_body(f"scoring failed: {type(e).__name__}", "server_error"), status_code=500
            )
        return JSONResponse(body, status_code=status)

    @app.get("/")
    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def endpoint_key(key_env: str, environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(key_env) or None


def serve(scorer: Scorer, host: str = "127.0.0.1", port: int = 8000, key_env: str = DEFAULT_KEY_ENV) -> None:
    """Serve in the foreground until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"host={host!r}: the local server binds loopback only (127.0.0.1)")
    key = endpoint_key(key_env)
    print(
        f"serving on http://{host}:{port}/score "
        f"({'key auth from $' + key_env if key else 'no auth: $' + key_env + ' is not set'}); Ctrl-C stops it",
        flush=True,
    )
    uvicorn.run(create_app(scorer, key), host=host, port=port, log_level="info")


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
) -> Iterator[str]:
    """Run `python -m deploy target=local` as a subprocess on a free loopback port; yield
    its base URL (`http://127.0.0.1:PORT`) once /health answers, then stop it by its pid.

    `model_uri`: anything `model.uri` takes (models:/NAME/VERSION, models:/NAME@ALIAS, a
    local MLflow model directory). `env` is added to this process's environment (e.g.
    MLFLOW_TRACKING_URI, FINETUNE_PHI_ENDPOINT_KEY). The server's output goes to a log file
    whose tail is raised with the error if it fails to start.
    """
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="finetune-phi-serve-"))
    log_path = workdir / "server.log"
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
            env={**os.environ, **(env or {})},
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
