"""A deadline for every request head, in uvicorn's HTTP/1.1 protocol, and JSON for h11's own 400s.

A request head must arrive within `header_timeout_s` of a connection opening or a response
ending; else the connection is closed. uvicorn has no such timer: a client sending half its
headers held a connection forever. A request h11 cannot parse gets a 400 in OpenAI's error shape.
"""

from __future__ import annotations

import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.payloads import error_body

log = logging.getLogger(__name__)


def header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with a deadline for every request head, and JSON for its own 400s.

    uvicorn 0.54 times out idle keep-alive connections only between requests, and every byte
    received resets that timer: a client that trickles or stalls its headers holds a connection
    forever. This timer starts when a connection opens or a response ends, and only a complete
    request head stops it. (uvicorn internals: uvicorn is pinned and tests/deploy catch a change.)
    """

    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._head_deadline = self.loop.call_later(timeout_s, self._close_without_head)

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle and self._head_deadline is not None:  # a whole head arrived
                self._head_deadline.cancel()
                self._head_deadline = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._head_deadline is None:
                self._head_deadline = self.loop.call_later(timeout_s, self._close_without_head)

        def connection_lost(self, exc):
            if self._head_deadline is not None:
                self._head_deadline.cancel()
            super().connection_lost(exc)

        def _close_without_head(self) -> None:
            self._head_deadline = None
            if self.cycle is None or self.cycle.response_complete:  # still waiting for a request head
                log.warning("closed a connection that sent no complete request head within %g s", timeout_s)
                self.transport.close()

        def send_400_response(self, msg: str) -> None:  # h11 refused the request: same shape as ours
            body = json.dumps(error_body(msg, code="bad_http_request")).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (
                h11.Response(status_code=400, headers=headers),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return HeaderDeadlineProtocol
