"""A request body within its limits: at most `limits.max_body_bytes` (413, from Content-Length
before reading, else by counting a chunked body) and arriving within `body_timeout_s` (408)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from common.payloads import BadRequest


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
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
