"""Key auth for the model routes: `Authorization: Bearer <key>`, as Azure managed endpoints take it.

The key is the value of the environment variable `key_env` names (default
FINETUNE_PHI_ENDPOINT_KEY), read once at start-up (deploy/serve/server.py) and never logged;
unset: no auth. Health routes stay open, like the probes Azure sends.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from common.payloads import BadRequest


def bearer_key(key: str | None) -> Callable[[Request], None]:
    """A route dependency that refuses (401) a request without `Authorization: Bearer <key>`."""

    def authorised(request: Request) -> None:
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise BadRequest(
                "missing or wrong key: send the header `Authorization: Bearer <endpoint key>`",
                code="invalid_api_key",
                status=401,
            )

    return authorised
