"""The health probes, open without a key like the probes Azure sends: `GET /` and `GET /health`
answer 200 {"status": "ok"}, or 503 {"status": "not ready", "reason"} while the queue is full, a
generation step has run past the request timeout, or generation died."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deploy.serve.serving import ChatServing

router = APIRouter()


@router.get("/")
@router.get("/health")
def health(request: Request):
    reason = ChatServing.of(request).not_ready_reason()
    if reason:
        return JSONResponse({"status": "not ready", "reason": reason}, 503, {"retry-after": "1"})
    return {"status": "ok"}
