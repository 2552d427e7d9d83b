"""Call a scoring endpoint (the local server or an Azure ML online endpoint) with a chat.

Plain functions over the standard library, so any front end can reuse them: the Prompt
flow tools in flow/standard and flow/chat are thin wrappers (promptflow copies this file
next to them through `additional_includes`), and nothing here imports promptflow.

    from flow.endpoint_client import EndpointSettings, ask
    settings = EndpointSettings("http://127.0.0.1:8000/score", key="...", payload="openai")
    ask(settings, [{"role": "user", "content": "What is the first word of: amber river"}])

Payload shapes (`payload`, from the connection's configs), as the deployments speak them:
- `openai`: {"messages": [...], "max_tokens": n, ...} -> {"choices": [{"message": {"content"}}]}
- `seedA`:  {"input_data": ["prompt"], "params": {...}} -> ["answer"] (one prompt, no history)
- `seedB`:  {"input_data": {"input_string": [...], "parameters": {...}}} -> {"output": "answer"}

Errors are `EndpointError` subclasses whose message names the endpoint and what to do:
unreachable, 401/403, timeout, busy (429/503 after a bounded number of retries), any other
HTTP error, and an answer that is not the shape asked for. The key never appears in them.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

PAYLOADS = ("openai", "seedA", "seedB")
RETRY_STATUSES = (429, 503)  # the endpoint is busy or scaling: worth a short wait
MAX_RETRY_AFTER_S = 10.0  # a server asking for longer gets an error instead of a hang
SNIPPET = 300  # characters of an unexpected body quoted in an error


class EndpointError(RuntimeError):
    """The endpoint could not answer; the message says why and what to do."""


class EndpointUnreachable(EndpointError):
    pass


class EndpointAuthError(EndpointError):
    pass


class EndpointTimeout(EndpointError):
    pass


class EndpointBusy(EndpointError):
    pass


class EndpointHTTPError(EndpointError):
    pass


class MalformedAnswer(EndpointError):
    pass


@dataclass(frozen=True)
class GenerationParams:
    """What the model is asked to do; flows expose each as an input with these defaults."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    do_sample: bool = False  # OpenAI semantics: a temperature > 0 samples anyway

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if float(self.temperature) < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < float(self.top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.do_sample and float(self.temperature) == 0:
            raise ValueError("do_sample=true needs temperature > 0 (temperature 0 means greedy)")


@dataclass(frozen=True)
class EndpointSettings:
    """Where and how to call; built from a promptflow CustomConnection by `from_connection`."""

    endpoint: str
    key: str = ""  # sent as `Authorization: Bearer <key>` when set
    payload: str = "openai"
    deployment: str = ""  # Azure: pin a deployment (azureml-model-deployment header)
    timeout_s: float = 60.0  # per attempt: connect and each read
    max_retries: int = 2  # extra attempts on 429/503
    retry_backoff_s: float = 1.0  # doubled each retry unless the server sends Retry-After

    def __post_init__(self):
        if self.payload not in PAYLOADS:
            raise ValueError(f"payload {self.payload!r} is not one of {', '.join(PAYLOADS)}")
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.endpoint!r} must be an http(s) URL of the scoring route")
        if float(self.timeout_s) <= 0 or int(self.max_retries) < 0:
            raise ValueError("timeout_s must be > 0 and max_retries >= 0")

    def __repr__(self) -> str:  # never print the key
        return f"EndpointSettings(endpoint={self.endpoint!r}, payload={self.payload!r}, key={'***' if self.key else ''!r})"

    @classmethod
    def from_connection(cls, configs: dict, secrets: dict) -> EndpointSettings:
        """From a CustomConnection's `configs` (strings) and `secrets` (`key`; not sent when
        configs.auth is "none", as promptflow insists on a non-empty secret)."""
        if not configs.get("endpoint"):
            raise ValueError(
                "the connection has no `endpoint` config; create it with "
                "`python -m flow.connect target=local` (or target=azureml)"
            )
        numbers = {
            name: convert(configs[name])
            for name, convert in (("timeout_s", float), ("max_retries", int), ("retry_backoff_s", float))
            if configs.get(name) not in (None, "")
        }
        return cls(
            endpoint=configs["endpoint"],
            key="" if configs.get("auth") == "none" else secrets.get("key") or "",
            payload=configs.get("payload") or "openai",
            deployment=configs.get("deployment") or "",
            **numbers,
        )


def history_to_messages(chat_history: list, question: str, system: str = "") -> list[dict]:
    """Prompt flow's chat history ([{"inputs": {...}, "outputs": {...}}, ...]) plus the new
    question as role/content messages, oldest first."""
    messages = [{"role": "system", "content": system}] if system else []
    for number, turn in enumerate(chat_history or []):
        try:
            user = next(iter(turn["inputs"].values()))
            assistant = next(iter(turn["outputs"].values()))
        except (KeyError, TypeError, AttributeError, StopIteration):
            raise ValueError(
                f"chat_history[{number}] must look like "
                '{"inputs": {"question": ...}, "outputs": {"answer": ...}}, '
                f"got {str(turn)[:SNIPPET]}"
            ) from None
        messages += [{"role": "user", "content": str(user)}, {"role": "assistant", "content": str(assistant)}]
    messages.append({"role": "user", "content": question})
    return messages


def build_payload(payload: str, messages: list[dict], params: GenerationParams) -> dict:
    """The request body for a payload shape."""
    generation = {
        "max_new_tokens": int(params.max_new_tokens),
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "do_sample": bool(params.do_sample) or float(params.temperature) > 0,
    }
    if payload == "openai":
        # OpenAI names the length max_tokens and has no do_sample (temperature 0 is greedy).
        return {
            "messages": messages,
            "max_tokens": generation["max_new_tokens"],
            "temperature": generation["temperature"],
            "top_p": generation["top_p"],
        }
    if payload == "seedB":
        return {"input_data": {"input_string": messages, "parameters": generation}}
    if payload == "seedA":
        if len(messages) != 1 or messages[0]["role"] != "user":
            raise ValueError(
                "payload seedA sends one prompt per request and cannot carry a system message or "
                "chat history; point the connection at payload=openai or payload=seedB "
                "(python -m flow.connect ... payload=openai)"
            )
        return {"input_data": [messages[0]["content"]], "params": generation}
    raise ValueError(f"payload {payload!r} is not one of {', '.join(PAYLOADS)}")


def parse_answer(payload: str, body: object) -> str:
    """The assistant text in a decoded response body, or MalformedAnswer saying what was expected."""
    try:
        if payload == "openai":
            completion = body[0] if isinstance(body, list) and len(body) == 1 else body
            answer = completion["choices"][0]["message"]["content"]
        elif payload == "seedB":
            answer = body["output"]
        else:
            answer = body[0]
    except (KeyError, IndexError, TypeError):
        answer = None
    if not isinstance(answer, str):
        expected = {
            "openai": '{"choices": [{"message": {"content": "..."}}]}',
            "seedA": '["answer", ...]',
            "seedB": '{"output": "answer"}',
        }[payload]
        raise MalformedAnswer(
            f"the endpoint's answer is not the {payload} shape {expected}: {json.dumps(body)[:SNIPPET]}; "
            "check that the connection's `payload` matches the deployment"
        )
    return answer


def ask(
    settings: EndpointSettings,
    messages: list[dict],
    params: GenerationParams | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Send `messages` to the endpoint and return the assistant's answer."""
    body = post_json(settings, build_payload(settings.payload, messages, params or GenerationParams()), sleep)
    return parse_answer(settings.payload, body)


def post_json(
    settings: EndpointSettings, payload: dict, sleep: Callable[[float], None] = time.sleep
) -> object:
    """POST `payload`; retry 429/503 at most `max_retries` times; decode the JSON answer."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.key:
        headers["Authorization"] = f"Bearer {settings.key}"
    if settings.deployment:
        headers["azureml-model-deployment"] = settings.deployment
    data = json.dumps(payload).encode("utf-8")
    where = settings.endpoint
    for attempt in range(int(settings.max_retries) + 1):
        request = urllib.request.Request(where, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=float(settings.timeout_s)) as response:
                raw = response.read()
            break
        except urllib.error.HTTPError as error:
            detail = _scrub(error.read().decode("utf-8", "replace")[:SNIPPET], settings.key)
            if error.code in RETRY_STATUSES and attempt < int(settings.max_retries):
                sleep(_retry_delay(error.headers.get("Retry-After"), settings.retry_backoff_s, attempt))
                continue
            raise _http_error(where, error.code, detail, attempt) from None
        except TimeoutError:
            raise EndpointTimeout(
                f"{where} did not answer within {settings.timeout_s:g} s; raise the connection's "
                "timeout_s or ask for fewer max_new_tokens"
            ) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise EndpointTimeout(
                    f"{where} did not accept a connection within {settings.timeout_s:g} s"
                ) from None
            raise EndpointUnreachable(
                f"cannot reach {where} ({error.reason}); is the server running? "
                "Start it with `python -m deploy target=local`, or re-create the connection "
                "with `python -m flow.connect ...` if the address changed"
            ) from None
    try:
        return json.loads(raw)
    except ValueError:
        text = _scrub(raw.decode("utf-8", "replace")[:SNIPPET], settings.key)
        raise MalformedAnswer(f"{where} answered with something that is not JSON: {text!r}") from None


def _retry_delay(retry_after: str | None, backoff_s: float, attempt: int) -> float:
    try:
        wanted = float(retry_after) if retry_after else backoff_s * 2**attempt
    except ValueError:  # an HTTP date: fall back to our own backoff
        wanted = backoff_s * 2**attempt
    return min(max(wanted, 0.0), MAX_RETRY_AFTER_S)


def _http_error(where: str, status: int, detail: str, retries: int) -> EndpointError:
    if status in (401, 403):
        return EndpointAuthError(
            f"{where} refused the request ({status}): the connection's key is missing or wrong. "
            "Re-create the connection with `python -m flow.connect ...` (local: export the same "
            f"FINETUNE_PHI_ENDPOINT_KEY the server was started with). Server said: {detail}"
        )
    if status in RETRY_STATUSES:
        return EndpointBusy(
            f"{where} is busy ({status}) after {retries} retries; try again later or scale the "
            f"deployment. Server said: {detail}"
        )
    return EndpointHTTPError(f"{where} answered HTTP {status}: {detail}")


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
