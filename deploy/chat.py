"""A small terminal chat with a registered chat model, for quick checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def reply_text(response) -> str:
    """The assistant text of an OpenAI-style chat completion (MLflow's llm/v1/chat output)."""
    response = response[0] if isinstance(response, list) else response
    return response["choices"][0]["message"]["content"]


def chat_loop(
    predict: Callable[[dict], object],
    lines: Iterable[str],
    write: Callable[[str], None] = print,
    system: str | None = None,
    max_tokens: int = 128,
    temperature: float = 0.0,
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
        params = {"max_tokens": max_tokens, "temperature": temperature}
        answer = reply_text(predict({"messages": messages, **params}))
        messages.append({"role": "assistant", "content": answer})
        write(f"assistant> {answer}")
    return messages


def stdin_lines(prompt: str = "you> "):
    while True:
        try:
            yield input(prompt)
        except (EOFError, KeyboardInterrupt):
            print()
            return


def http_predict(scoring_url: str, key: str | None = None, timeout: float = 300) -> Callable[[dict], object]:
    """`predict` for chat_loop that POSTs OpenAI-style payloads to a scoring URL
    (a local server's /score or an Azure endpoint's scoring URI)."""
    import json
    import urllib.error
    import urllib.request

    def predict(payload: dict):
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(scoring_url, json.dumps(payload).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{scoring_url} answered {e.code}: {e.read().decode(errors='replace')}") from e

    return predict


def scorer_predict(scorer) -> Callable[[dict], object]:
    """`predict` for chat_loop over an in-process Scorer (the local server's code, no HTTP)."""

    def predict(payload: dict):
        status, body = scorer.handle(payload)
        if status != 200:
            raise RuntimeError(body["error"])
        return body

    return predict
