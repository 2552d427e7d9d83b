"""A request body within its limits: JSON (`Content-Type: application/json`, else 415), at most
`limits.max_body_bytes` (413, from Content-Length before reading, else by counting a chunked
body) and arriving within `body_timeout_s` (408).

A body refused before it was read whole (413, 415) is answered at once and then drained, as
nginx's lingering close does: up to `max(max_body_bytes, 1 MiB)` more bytes within
`max(body_timeout_s, 10 s)` are read and discarded before the connection closes. Closing a socket that still
holds unread bytes makes the kernel send a reset, which can destroy the answer before an ordinary
client (one that sends its whole body before reading) has read it.

Requiring JSON also keeps web pages out: a browser sends a cross-site POST without asking first
only with a form's or text's content type, never with application/json.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import Response

from common.payloads import BadRequest

LINGER_MIN_BYTES = 2**20
LINGER_MIN_S = 10.0


def check_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise BadRequest(
            f"the body must be JSON sent with `Content-Type: application/json`; got {media_type or 'none'!r:.60}",
            param="content-type",
            code="unsupported_media_type",
            status=415,
        )


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    check_json(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(
            f"the body has {declared} bytes; this server takes at most {max_bytes}",
            code="request_too_large",
            status=413,
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():  # chunked bodies have no Content-Length: count
                size += len(chunk)
                if size > max_bytes:
                    raise BadRequest(
                        f"the body has more than {max_bytes} bytes, the most this server takes",
                        code="request_too_large",
                        status=413,
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(
            f"the body did not arrive within {timeout_s:g} s",
            code="request_timeout",
            status=408,
        ) from None
    return b"".join(chunks)


class LingeringClose(Response):
    """A response sent in full at once (its Content-Length tells the client where it ends), after
    which the rest of the request body is read and discarded, at most `max_bytes` within
    `timeout_s`; then the response ends and the connection closes (`connection: close`)."""

    def __init__(self, response: Response, max_bytes: int, timeout_s: float):
        super().__init__(response.body, response.status_code, media_type=response.media_type)
        self.raw_headers = [*response.raw_headers, (b"connection", b"close")]
        self.max_bytes, self.timeout_s = max(max_bytes, LINGER_MIN_BYTES), max(timeout_s, LINGER_MIN_S)

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        drained = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while drained <= self.max_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        break  # the client went away
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break  # the whole body is read
        except TimeoutError:
            pass
        await send({"type": "http.response.body", "body": b"", "more_body": False})
