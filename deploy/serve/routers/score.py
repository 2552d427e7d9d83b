"""Azure's /score: the three payload shapes the scoring script (deploy/scoring/score.py) takes,
answered as it answers them, so a client of the Azure endpoint runs against this server unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request

from common.payloads import parse_json, parse_request
from deploy.serve.middleware.body import read_body
from deploy.serve.responses import respond
from deploy.serve.serving import ChatServing

router = APIRouter()


@router.post("/score")
async def score(request: Request):
    serving = ChatServing.of(request)
    body = await read_body(request, serving.limits.max_body_bytes, serving.settings.body_timeout_s)
    return await respond(request, parse_request(parse_json(body), serving.limits))
