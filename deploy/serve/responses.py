"""How a chat request's answers go back over HTTP, for /v1/chat/completions and /score alike:
one JSON body in the request's own shape, or OpenAI's chunks as server-sent events."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from common.payloads import ChatRequest, format_response
from deploy.serve.serving import ChatServing


async def respond(request: Request, chat: ChatRequest) -> Response:
    """Generate the request's answers in the shape it came in (plain, or a stream of events)."""
    serving = ChatServing.of(request)
    prompts = await serving.prompt_ids(chat)
    slots = serving.reserve(len(prompts))  # QueueFull: 503
    if chat.stream:
        return StreamingResponse(
            serving.events(serving.stream(prompts[0], chat, slots), chat),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    answers = await serving.answers(chat, prompts, slots, client_gone(request))
    if answers is None:
        return Response(status_code=499)  # the client went away: nobody reads this, the access log does
    return JSONResponse(format_response(chat, answers, serving.model_name))


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
