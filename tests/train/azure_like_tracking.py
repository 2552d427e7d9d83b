"""A real `mlflow server` on 127.0.0.1 behind a loopback proxy that answers as Azure ML's tracking
server does where it differs from MLflow's own. Everything else reaches the real server unchanged.

What the proxy refuses, and the evidence for each answer:
- MLflow 3's logged-models API (every `/mlflow/logged-models` route): 404 with an empty body,
  Azure/azure-sdk-for-python#44896 ("... logged-models failed with error code 404 != 200. Response
  body: ''"). MLflow 2.x servers have no such routes either (their 404 is Flask's HTML page).
- More than 200 params on a run: 400 INVALID_PARAMETER_VALUE "A field of the entity is over the size
  limit. FieldName=Parameters, Limit=200, Size=N" (Azure/azure-sdk-for-python#35685); more than 250
  metric rows in one batch: the same with FieldName=MetricV2Dto.Value/Count (mlflow/mlflow#11462).
- 50 tags per run (key 100, value 1,000 characters) and 50 metric names per run: Azure ML's
  resource-limits page (resource-limits-capacity, "Runs", "Metrics") gives the limits, not the error
  text; the answers reuse the shape above with the page's names for the field.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from deploy.serve.background import wait_for_health

LIMITS = {"Parameters": 200, "MetricNames": 50, "Tags": 50}
MAX_METRIC_ROWS_PER_BATCH = 250
MAX_TAG_KEY, MAX_TAG_VALUE = 100, 1000
LOGGED_MODELS = "/mlflow/logged-models"


def over_limit(field: str, limit: int, size: int) -> dict:
    message = (
        "Response: {'Error': {'Code': 'ValidationError', 'Message': 'A field of the entity is over the size "
        f"limit. FieldName={field}, Limit={limit}, Size={size}. See https://aka.ms/azure-machine-learning-limits "
        "for service limits documentation.'}}"
    )
    return {"error_code": "INVALID_PARAMETER_VALUE", "message": message}


class RunLedger:
    """The params, metric names and tags each run holds: a request is checked before it is forwarded."""

    def __init__(self):
        self.lock = threading.Lock()
        self.keys = {field: defaultdict(set) for field in LIMITS}

    def refuse(self, route: str, body: dict, run: str) -> dict | None:
        """Azure's error body when the request breaks a limit, else None (and it is recorded)."""
        new = {
            "runs/log-batch": {
                "Parameters": body.get("params", []),
                "MetricNames": body.get("metrics", []),
                "Tags": body.get("tags", []),
            },
            "runs/log-parameter": {"Parameters": [body]},
            "runs/log-metric": {"MetricNames": [body]},
            "runs/set-tag": {"Tags": [body]},
            "runs/create": {"Tags": body.get("tags", [])},
        }.get(route, {})
        if len(new.get("MetricNames", [])) > MAX_METRIC_ROWS_PER_BATCH:
            return over_limit("MetricV2Dto.Value/Count", MAX_METRIC_ROWS_PER_BATCH, len(new["MetricNames"]))
        for tag in new.get("Tags", []):
            if len(tag["key"]) > MAX_TAG_KEY:
                return over_limit("Tags.Key", MAX_TAG_KEY, len(tag["key"]))
            if len(str(tag.get("value", ""))) > MAX_TAG_VALUE:
                return over_limit("Tags.Value", MAX_TAG_VALUE, len(str(tag["value"])))
        with self.lock:
            held = {
                field: self.keys[field][run] | {item["key"] for item in new.get(field, [])}
                for field in LIMITS
            }
            for field, limit in LIMITS.items():
                if len(held[field]) > limit:
                    return over_limit(field, limit, len(held[field]))
            for field in LIMITS:
                self.keys[field][run] = held[field]
        return None

    def counts(self, run: str) -> dict[str, int]:
        return {field: len(self.keys[field][run]) for field in LIMITS}


class AzureLikeProxy:
    """The proxy on a free 127.0.0.1 port, in a thread; `seen` lists (method, path) of every request."""

    def __init__(self, upstream_port: int):
        self.ledger, self.seen = RunLedger(), []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # tests read `seen`
                pass

            def reply(self, status: int, body: bytes, content_type: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                proxy.seen.append((self.command, path))
                if LOGGED_MODELS in path:
                    return self.reply(404, b"", "text/plain")
                route = path.split("/api/2.0/mlflow/", 1)[-1]
                if self.command == "POST" and route.startswith("runs/") and route != "runs/create":
                    request = json.loads(body or b"{}")
                    refused = proxy.ledger.refuse(
                        route, request, request.get("run_id") or request.get("run_uuid")
                    )
                    if refused:
                        return self.reply(400, json.dumps(refused).encode())
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=300)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                if route == "runs/create" and response.status == 200:  # the run's id comes with the answer
                    run = json.loads(data)["run"]["info"]["run_id"]
                    proxy.ledger.refuse(route, json.loads(body), run)  # recorded: MLflow's few system tags
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class MlflowServer:
    """`mlflow server` (this environment's MLflow) with a sqlite store and served artifacts in `root`."""

    def __init__(self, root: Path, port: int):
        self.url, self.log = f"http://127.0.0.1:{port}", root / "mlflow-server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        command += [
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "art"),
        ]
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [*command, "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_health(self.url, self.process, timeout=120)  # mlflow server answers /health too
        except (RuntimeError, TimeoutError):
            self.stop()
            raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}") from None

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own group: the server and its workers
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:  # it takes ~30 s to exit; it holds nothing a test needs
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
