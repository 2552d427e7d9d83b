"""The access log: one line per request on the `deploy.access` logger, without its query string
(where credentials get sent) or headers. It replaces uvicorn's, which prints query strings."""

from __future__ import annotations

import logging
import time

access_log = logging.getLogger("deploy.access")


class AccessLog:
    """ASGI middleware writing `client "METHOD /path" status elapsed` once the response is sent."""

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
