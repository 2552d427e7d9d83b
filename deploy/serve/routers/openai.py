"""OpenAI's API under /v1: the models list, one model, and chat completions (plain, or
`stream: true` as server-sent events), so the `openai` client, LiteLLM, LangChain or
promptflow's OpenAI connection call the model unchanged (`base_url=http://127.0.0.1:8000/v1`,
the endpoint key as `api_key`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from common.payloads import parse_chat_completion, parse_json
from deploy.serve.middleware.body import read_body
from deploy.serve.responses import respond
from deploy.serve.serving import ChatServing

router = APIRouter(prefix="/v1")


@router.get("/models")
def list_models(request: Request):
    return {"object": "list", "data": [ChatServing.of(request).model_card]}


@router.get("/models/{model_id:path}")
def retrieve_model(request: Request, model_id: str):
    serving = ChatServing.of(request)
    serving.check_model(model_id)
    return serving.model_card


@router.post("/chat/completions")
async def create_chat_completion(request: Request):
    serving = ChatServing.of(request)
    body = await read_body(request, serving.limits.max_body_bytes, serving.settings.body_timeout_s)
    chat = parse_chat_completion(parse_json(body), serving.limits)
    serving.check_model(chat.model)
    return await respond(request, chat)
