"""The local server's request handling, without HTTP: chat requests in, answers (or OpenAI's
stream chunks) out, over one `BatchedGenerator` that batches every request in flight.

Prompts are tokenized and checked against the context by `common.generation` (the renderer
Azure's score.py uses), off the event loop. A request is answered within the request timeout
(else `RequestTimedOut`); one whose client goes away is cancelled and frees its slot. Errors
are raised, and answered over HTTP by deploy/serve/middleware/errors.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable

from fastapi.concurrency import run_in_threadpool

from common.payloads import BadRequest, ChatRequest, RequestLimits, error_body
from deploy.config import ServerSettings
from deploy.serve.batching import BatchedGenerator, GenerationFailed, Job, QueueFull


class RequestTimedOut(RuntimeError):
    """The answer was not ready within the request timeout."""


class ChatServing:
    """The served model, its limits and its batching engine: what every route works with."""

    def __init__(
        self, engine: BatchedGenerator, model_name: str, limits: RequestLimits, settings: ServerSettings
    ):
        self.engine, self.model_name, self.limits, self.settings = engine, model_name, limits, settings
        self.model_card = {
            "id": model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "finetune-phi",
        }
        self.too_slow = (
            f"the answer was not ready within the request timeout ({settings.request_timeout_s:g} s); ask "
            "for fewer max_tokens or retry when the server is less busy"
        )

    @staticmethod
    def of(request) -> ChatServing:
        """The ChatServing of the app a request came to (deploy.serve.app.create_app sets it)."""
        return request.app.state.serving

    def not_ready_reason(self) -> str | None:
        return self.engine.not_ready_reason(self.settings.request_timeout_s)

    def check_model(self, model_id: str) -> None:
        """404 unless `model_id` is the model served (or empty: the LLM tool's default)."""
        if model_id not in ("", self.model_name):
            raise BadRequest(
                f"The model `{model_id}` does not exist; this server serves `{self.model_name}`",
                param="model",
                code="model_not_found",
                status=404,
            )

    async def submit(self, chat: ChatRequest) -> list[Job]:
        """A job per conversation of the request, or none: QueueFull or GenerationFailed cancels them all."""
        max_new_tokens = chat.generate["max_new_tokens"]
        generator = self.engine.generator
        # Tokenizing is bounded by the character limit, and kept off the event loop all the same.
        prompts = await run_in_threadpool(
            lambda: [generator.checked_prompt_ids(c, max_new_tokens) for c in chat.conversations]
        )
        for prompt in prompts:
            self.engine.check_fits(len(prompt), max_new_tokens)
        jobs: list[Job] = []
        try:
            for prompt in prompts:
                jobs.append(self.engine.submit(prompt, chat.generate, chat.stop, stream=chat.stream))
        except (QueueFull, GenerationFailed):
            for job in jobs:
                job.cancel()
            raise
        return jobs

    async def answers(self, jobs: list[Job], client_gone: Awaitable) -> list[dict] | None:
        """Every job's answer, or None if `client_gone` completes first (its jobs are cancelled);
        RequestTimedOut after the request timeout."""
        done = asyncio.ensure_future(
            asyncio.wait_for(asyncio.gather(*(job.result() for job in jobs)), self.settings.request_timeout_s)
        )
        gone = asyncio.ensure_future(client_gone)
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
            return done.result() if done.done() else None
        except TimeoutError:
            raise RequestTimedOut(self.too_slow) from None
        finally:
            done.cancel()
            gone.cancel()
            for job in jobs:
                job.cancel()  # no-op for finished ones

    async def events(self, job: Job, chat: ChatRequest) -> AsyncIterator[str]:
        """OpenAI's chunks as server-sent events; Starlette cancels this when the client goes away."""
        chunk = chunk_writer(self.model_name)

        def delta(content: dict, finish_reason: str | None = None) -> str:
            return chunk([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}])

        try:
            yield delta({"role": "assistant", "content": ""})
            async with asyncio.timeout(self.settings.request_timeout_s):
                async for piece in job.deltas():
                    yield delta({"content": piece})
            yield delta({}, job.answer["finish_reason"])
            if chat.include_usage:
                yield chunk([], usage=job.answer["usage"])
            yield "data: [DONE]\n\n"
        except TimeoutError:  # the 200 is sent: an error event, which the openai client raises as APIError
            yield f"data: {json.dumps(error_body(self.too_slow, 'server_error', code='request_timeout'))}\n\n"
        except GenerationFailed as e:
            yield f"data: {json.dumps(error_body(str(e), 'server_error', code='generation_failed'))}\n\n"
        finally:
            job.cancel()


def chunk_writer(model_name: str):
    """A function writing one `chat.completion.chunk` event of a new completion."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(choices: list, **extra) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    return chunk
