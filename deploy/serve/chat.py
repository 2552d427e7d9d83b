"""`python -m deploy action=chat`: a small terminal chat with a registered chat model, for quick checks.

    python -m deploy action=chat model.version=2                 # the model, in this process
    python -m deploy action=chat chat.url=http://127.0.0.1:8000   # a running server's /score
    python -m deploy target=azureml action=chat                  # the Azure endpoint (its key fetched)

The conversation goes through the same code as every other client: a running endpoint
through `common.endpoint_client`, or the model in this process through the scoring code with
an OpenAI-shaped payload (`common.payloads`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from common.azure_workspace import WorkspaceSettings, endpoint_credentials, ml_client
from common.endpoint_client import EndpointSettings, ask
from common.payloads import GenerationParams, Shape, build_payload, parse_answer
from deploy.registry.find import find_model
from deploy.registry.load import load_checked_model
from deploy.scoring.score import Scorer

Answer = Callable[[list[dict]], str]  # the conversation so far -> the assistant's reply


def run_chat(cfg, client=None) -> list[dict]:
    """action=chat: `chat.url`'s /score, the target=azureml endpoint (`client` injects an MLClient),
    or the checked model in this process; returns the final conversation."""
    params = GenerationParams(max_new_tokens=cfg.chat.max_tokens, temperature=cfg.chat.temperature)
    if cfg.chat.url:
        url = cfg.chat.url.rstrip("/")
        url = url if url.endswith("/score") else f"{url}/score"
        answer = endpoint_answer(url, os.environ.get(cfg.key_env), params)
    elif cfg.target.name == "azureml":
        client = client or ml_client(WorkspaceSettings.from_config(cfg.target.workspace))
        credentials = endpoint_credentials(client, cfg.target.endpoint.name)
        url = credentials.scoring_uri
        answer = endpoint_answer(url, credentials.key, params)
    else:
        ref = find_model(
            cfg.model, cfg.tracking_uri, cfg.output_root, for_azureml=False, default_alias=cfg.gate.alias
        )
        url = ref.uri
        answer = scorer_answer(Scorer(load_checked_model(ref, cfg.tracking_uri, cfg.parity.check)), params)
    print("chatting with", url, "(/reset to start over, /exit or Ctrl-D to leave)")
    return chat_loop(answer, stdin_lines(), system=cfg.chat.system)


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
