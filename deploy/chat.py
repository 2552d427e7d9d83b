"""A small terminal chat with a registered chat model, for quick checks.

The conversation goes through the same code as every other client: a running endpoint
through `common.endpoint_client`, or the model in this process through the scoring code with
an OpenAI-shaped payload (`common.payloads`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from common.endpoint_client import EndpointSettings, ask
from common.payloads import GenerationParams, Shape, build_payload, parse_answer

Answer = Callable[[list[dict]], str]  # the conversation so far -> the assistant's reply


def chat_loop(
    answer: Answer, lines: Iterable[str], write: Callable[[str], None] = print, system: str | None = None
) -> list[dict]:
    """Send each input line with the conversation so far; `/reset` starts over.

    Returns the final conversation (the history grows turn by turn, so the model sees it).
    """
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            messages = list(start)
            write("(conversation reset)")
            continue
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": answer(list(messages))})
        write(f"assistant> {messages[-1]['content']}")
    return messages


def stdin_lines(prompt: str = "you> "):
    while True:
        try:
            yield input(prompt)
        except (EOFError, KeyboardInterrupt):
            print()
            return


def endpoint_answer(scoring_url: str, key: str | None, params: GenerationParams) -> Answer:
    """Replies from a running endpoint (a local server's /score or an Azure scoring URI)."""
    settings = EndpointSettings(scoring_url, key=key or "", payload=Shape.openai, timeout_s=300)
    return lambda messages: ask(settings, messages, params)


def scorer_answer(scorer, params: GenerationParams) -> Answer:
    """Replies from an in-process Scorer (the scoring script's code, no HTTP)."""

    def answer(messages: list[dict]) -> str:
        status, body = scorer.handle(build_payload(Shape.openai, messages, params))
        if status != 200:
            raise RuntimeError(body["error"]["message"])
        return parse_answer(Shape.openai, body)

    return answer
