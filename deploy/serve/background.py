"""The local server as a subprocess, for tests, benchmarks and `python -m e2e`: started on a free
loopback port, awaited until /health answers, stopped by its own process id."""

from __future__ import annotations

import contextlib
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

from common.paths import PROJECT_ROOT


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
