"""A model's answers to the held-out conversations, as an endpoint client would get them.

Each conversation becomes the OpenAI request an endpoint client sends (greedy,
`eval.max_new_tokens`), checked by the scoring contract (`common.payloads`) and the context
rule, and answered by the serving code's generator (`deploy.scoring.score.ChatModel` over
`common.generation`: the same template rendering, stop ids and decoding as both servers) in
batches of `eval.batch_size`. A request the endpoint would refuse is a failed row, counted in
`error_rate` and as a wrong, empty answer, never dropped. The Azure traffic gate sends the same
requests to deployments instead (deploy/azure/traffic_gate.py) and reads their answers with
`completion_answer`.
"""

from __future__ import annotations

import json
import time

from common.payloads import (
    BadRequest,
    GenerationParams,
    Shape,
    UnexpectedAnswer,
    build_payload,
    parse_request,
)
from deploy.evaluate.cases import Case


def openai_request(case: Case, max_new_tokens: int) -> dict:
    """The request an endpoint client sends for this conversation: greedy, OpenAI's shape."""
    return build_payload(Shape.openai, case.messages, GenerationParams(max_new_tokens=max_new_tokens))


def completion_answer(body) -> dict:
    """text, finish_reason and usage of a chat.completion body (as `Generator.answer_batch` gives them)."""
    try:
        choice = body["choices"][0]
        answer = {
            "text": choice["message"]["content"],
            "finish_reason": choice["finish_reason"],
            "usage": {"completion_tokens": int(body["usage"]["completion_tokens"])},
        }
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise UnexpectedAnswer(f"not a chat.completion with usage: {json.dumps(body)[:300]}") from e
    if not isinstance(answer["text"], str):
        raise UnexpectedAnswer(f"the answer's content is not text: {json.dumps(body)[:300]}")
    return answer


def answer_row(case: Case, answer: dict | None, latency_s: float | None, error: str | None = None) -> dict:
    """One table row; a failed request (`answer` None) is an empty answer that did not stop."""
    return {
        "conversation": json.dumps(case.messages, ensure_ascii=False),
        "prompt": case.messages[-1]["content"],
        "reference": case.reference,
        "answer": answer["text"] if answer else "",
        "finish_reason": answer["finish_reason"] if answer else "error",
        "answer_tokens": answer["usage"]["completion_tokens"] if answer else 0,
        "latency_s": latency_s,
        "error": error,
    }


def answer_in_process(chat_model, cases: list[Case], max_new_tokens: int, batch_size: int) -> list[dict]:
    """The serving code's answers, in batches; a request the endpoint refuses is a failed row."""
    limits = chat_model.request_limits()  # as the servers set them
    rows: list[dict | None] = [None] * len(cases)
    accepted = []
    for index, case in enumerate(cases):
        try:
            request = parse_request(openai_request(case, max_new_tokens), limits)
            ids = chat_model.checked_prompt_ids(request.conversations[0], request.generate["max_new_tokens"])
        except BadRequest as e:
            rows[index] = answer_row(case, None, None, f"{e.status} {e.code or 'invalid_request'}: {e}")
            continue
        accepted.append((index, request, ids))
    for start in range(0, len(accepted), batch_size):
        batch = accepted[start : start + batch_size]
        started = time.perf_counter()
        # Every request carries the same generation settings (openai_request), so one batch does.
        answers = chat_model.answer_prompts(
            [ids for _, _, ids in batch], batch[0][1].generate, batch[0][1].stop
        )
        latency = time.perf_counter() - started  # each answer waited for its whole batch
        for (index, _, _), answer in zip(batch, answers):
            rows[index] = answer_row(cases[index], answer, latency)
    return rows
