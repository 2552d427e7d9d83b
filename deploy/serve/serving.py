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
from deploy.serve.batching import BatchedGenerator, GenerationFailed, Job, Slots


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

    async def prompt_ids(self, chat: ChatRequest) -> list[list[int]]:
        """Each conversation's prompt ids, checked against the context (BadRequest naming both numbers)."""
        max_new_tokens = chat.generate["max_new_tokens"]
        generator = self.engine.generator
        # Tokenizing is bounded by the character limit, and kept off the event loop all the same.
        prompts = await run_in_threadpool(
            lambda: [generator.checked_prompt_ids(c, max_new_tokens) for c in chat.conversations]
        )
        for prompt in prompts:  # one the KV cache could never hold is a 400, not a wait forever
            self.engine.check_fits(len(prompt), max_new_tokens)
        return prompts

    def reserve(self, prompts: int) -> Slots:
        """The request's share of the slots: one per prompt, at most `max_slots_per_request` (QueueFull)."""
        return self.engine.reserve(max(1, min(prompts, self.settings.max_slots_per_request)))

    def stream(self, prompt: list[int], chat: ChatRequest, slots: Slots) -> Job:
        """The job of a streamed request; its slots are freed when it ends (or fails to start)."""
        try:
            job = self.engine.submit(prompt, chat.generate, chat.stop, stream=True, slots=slots)
        except BaseException:
            slots.release()
            raise
        job.own_slot = slots
        return job

    async def answers(
        self, chat: ChatRequest, prompts: list[list[int]], slots: Slots, client_gone: Awaitable
    ) -> list[dict] | None:
        """Every prompt's answer, generated at most `slots.count` at a time; None if `client_gone`
        completes first (its jobs are cancelled); RequestTimedOut after the request timeout. The
        slots are released when it returns."""
        jobs: list[Job] = []
        answers: list[dict | None] = [None] * len(prompts)
        pending = iter(enumerate(prompts))

        async def one_slot() -> None:
            for i, prompt in pending:  # shared: each slot takes the next prompt when it is free
                job = self.engine.submit(prompt, chat.generate, chat.stop, slots=slots)
                jobs.append(job)
                answers[i] = await job.result()

        done = asyncio.ensure_future(
            asyncio.wait_for(
                asyncio.gather(*(one_slot() for _ in range(slots.count))), self.settings.request_timeout_s
            )
        )
        gone = asyncio.ensure_future(client_gone)
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                return None
            done.result()  # a job's failure, raised
            return answers
        except TimeoutError:
            raise RequestTimedOut(self.too_slow) from None
        finally:
            done.cancel()
            gone.cancel()
            for job in jobs:
                job.cancel()  # no-op for finished ones
            slots.release()

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
