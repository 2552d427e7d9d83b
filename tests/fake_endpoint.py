"""A scriptable loopback endpoint for tests of clients: the endpoint client and the flows."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
