"""Fixtures for the flow tests: an isolated promptflow home and a scriptable loopback endpoint.

promptflow fixes its home directory (connections, run records, config) when it is first
imported, so PF_HOME_DIRECTORY is set here, at collection, before any test imports it.
The keyring that holds promptflow's encryption key goes to a temporary file too
(keyrings.alt's plaintext backend under XDG_DATA_HOME), so no test ever touches a
developer's ~/.promptflow or keyring.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

FLOW_DIR = Path(__file__).resolve().parents[2] / "flow"
PF_HOME = Path(tempfile.mkdtemp(prefix="finetune-phi-pf-home-"))
KEYRING_HOME = PF_HOME / "xdg-data"
os.environ["PF_HOME_DIRECTORY"] = str(PF_HOME)
os.environ["XDG_DATA_HOME"] = str(KEYRING_HOME)
os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
# promptflow builds an Azure Monitor exporter even with telemetry off, and that exporter
# fetches its settings from settings.sdk.monitor.azure.com unless this is set.
os.environ["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] = "true"
# Telemetry off; no trace collector (which would start promptflow's background service).
(PF_HOME / "pf.yaml").write_text("telemetry:\n  enabled: false\ntrace:\n  destination: none\n")
# promptflow asks pypi.org for a newer version once a week; a fresh check time skips that.
(PF_HOME / "pf_version_check.json").write_text(
    json.dumps({"last_check_time": str(datetime.datetime.now()), "latest_version": "0"})
)


@pytest.fixture(scope="session", autouse=True)
def isolated_promptflow_home():
    if "promptflow._sdk._constants" in sys.modules:
        from promptflow._sdk._constants import HOME_PROMPT_FLOW_DIR

        assert Path(HOME_PROMPT_FLOW_DIR) == PF_HOME.resolve(), (
            f"promptflow was imported before tests/flow/conftest.py and uses {HOME_PROMPT_FLOW_DIR}; "
            "refusing to touch that store"
        )
    yield PF_HOME
    shutil.rmtree(PF_HOME, ignore_errors=True)


def connect_config(*overrides: str):
    """`python -m flow.connect`'s config as Hydra composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(FLOW_DIR / "conf"), version_base="1.3"):
        return compose("connect", overrides=list(overrides))


def port_and_route(url: str) -> tuple[str, str]:
    host_port, route = url.removeprefix("http://").split("/", 1)
    return host_port.split(":")[1], "/" + route


class FakeEndpoint:
    """A loopback HTTP server answering from a script of (status, body, headers, delay_s)
    and recording every request: for error injection the real server cannot do.

    With `forward_to` it is a recording proxy in front of a real server instead, to see
    what a flow sent (the chat history) while the real model answers."""

    def __init__(self, forward_to: str | None = None):
        self.requests: list[dict] = []
        self.script: list[tuple] = []
        self.default = (200, {"output": "ok"}, {}, 0.0)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body or b"null"),
                    }
                )
                if forward_to:
                    status, answer, headers, delay_s = forward(forward_to, self.path, body, self.headers)
                else:
                    status, answer, headers, delay_s = (
                        endpoint.script.pop(0) if endpoint.script else endpoint.default
                    )
                time.sleep(delay_s)
                raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    for name, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *responses):
        """Queue responses: (status, body) or (status, body, headers) or (..., delay_s)."""
        for response in responses:
            self.script.append(tuple(response) + (None, None, {}, 0.0)[len(response) :])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def forward(base_url: str, path: str, body: bytes, headers) -> tuple:
    wanted = {k: v for k, v in headers.items() if k.lower() in ("authorization", "content-type")}
    request = urllib.request.Request(base_url + path, data=body, headers=wanted, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read(), {}, 0.0
    except urllib.error.HTTPError as error:
        return error.code, error.read(), {}, 0.0


@pytest.fixture
def fake_endpoint():
    endpoint = FakeEndpoint()
    yield endpoint
    endpoint.close()
