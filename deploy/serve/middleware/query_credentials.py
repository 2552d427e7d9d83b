"""A credential in the query string is refused on every route: URLs end up in logs."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Request

from common.payloads import BadRequest

# Query parameters that carry credentials elsewhere (Azure SAS `sig`, OAuth `code`/`token`, ...).
CREDENTIAL_QUERY_NAMES = {
    "key",
    "api_key",
    "api-key",
    "apikey",
    "token",
    "access_token",
    "code",
    "sig",
    "password",
}


def refuse_credentials_in_query(request: Request) -> None:
    """An app-wide dependency: 400 for a request whose query string names a credential."""
    if any(name.lower() in CREDENTIAL_QUERY_NAMES for name, _ in parse_qsl(request.url.query)):
        raise BadRequest(
            "credentials are not accepted in the query string (URLs end up in logs); "
            "send the header `Authorization: Bearer <endpoint key>`",
            code="credential_in_query",
        )
