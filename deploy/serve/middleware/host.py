"""Only requests addressed to this machine: a Host header naming a loopback address (any port), or
one of `server.allowed_hosts`; else 400 before any route runs.

The server binds 127.0.0.1, but a web page the user has open can still reach it: a page of
`evil.example` whose DNS name is rebound to 127.0.0.1 sends requests that the browser treats as
same-origin, so it may read the answers. Such a request carries `Host: evil.example`; refusing
it closes that door, with or without a key (the health routes need none).
"""

from __future__ import annotations

from deploy.serve.middleware.errors import error_response

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def host_name(host: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` -> `::1`, `LocalHost:80` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class LoopbackHost:
    """ASGI middleware: 400 in OpenAI's error shape for a Host header that does not name this machine.
    A request without one (HTTP/1.0) is let through: browsers always send it."""

    def __init__(self, app, allowed_hosts: list[str] | tuple[str, ...] = ()):
        self.app = app
        self.allowed = LOOPBACK_HOSTS | {host_name(h) for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host")
            if host is not None and host_name(host.decode("latin-1")) not in self.allowed:
                response = error_response(
                    400,
                    f"Host {host.decode('latin-1')[:100]!r} is not this server's: it answers requests to "
                    "127.0.0.1, localhost or [::1] (add a name with target.server.allowed_hosts)",
                    code="invalid_host",
                    headers={"connection": "close"},
                )
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
