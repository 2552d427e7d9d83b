"""Call a scoring endpoint (the local server or an Azure ML online endpoint) with a chat.

Plain functions over urllib3 and the payload contract (`common.payloads`), so any front end
can reuse them: the Prompt flow tools in flow/standard and flow/chat are thin wrappers
(promptflow copies the `common` folder next to them through `additional_includes`), deploy's
terminal chat and the serving benchmark call it too, and nothing here imports promptflow.

    from common.endpoint_client import EndpointSettings, ask
    settings = EndpointSettings("http://127.0.0.1:8000/score", key="...", payload="openai")
    ask(settings, [{"role": "user", "content": "What is the first word of: amber river"}])

Errors are `EndpointError` subclasses whose message names the endpoint and what to do:
unreachable, 401/403, timeout, busy (429/503 after a bounded number of retries, honouring
Retry-After, through urllib3's `Retry`), any other HTTP error, and an answer that is not the
shape asked for. The key never appears in them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import MaxRetryError, NewConnectionError, TimeoutError
from urllib3.util.retry import Retry

from common.payloads import GenerationParams, Shape, UnexpectedAnswer, build_payload, parse_answer

__all__ = ["EndpointSettings", "GenerationParams", "ask", "history_to_messages", "post_json"]

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
class EndpointSettings:
    """Where and how to call; built from a promptflow CustomConnection by `from_connection`."""

    endpoint: str
    key: str = ""  # sent as `Authorization: Bearer <key>` when set
    payload: Shape = Shape.openai
    deployment: str = ""  # Azure: pin a deployment (azureml-model-deployment header)
    timeout_s: float = 60.0  # per attempt: connect and each read
    max_retries: int = 2  # extra attempts on 429/503
    retry_backoff_s: float = 1.0  # urllib3's backoff factor when the server sends no Retry-After

    def __post_init__(self):
        try:
            object.__setattr__(self, "payload", Shape(self.payload))
        except ValueError:
            raise ValueError(
                f"payload {self.payload!r} is not one of {', '.join(s.value for s in Shape)}"
            ) from None
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.endpoint!r} must be an http(s) URL of the scoring route")
        if float(self.timeout_s) <= 0 or int(self.max_retries) < 0:
            raise ValueError("timeout_s must be > 0 and max_retries >= 0")

    def __repr__(self) -> str:  # never print the key
        return (
            f"EndpointSettings(endpoint={self.endpoint!r}, payload={self.payload.value!r}, "
            f"key={'***' if self.key else ''!r})"
        )

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
            payload=configs.get("payload") or Shape.openai,
            deployment=configs.get("deployment") or "",
            **numbers,
        )


def history_to_messages(
    chat_history: list,
    question: str,
    system: str = "",
    input_name: str = "question",
    output_name: str = "answer",
) -> list[dict]:
    """Prompt flow's chat history ([{"inputs": {"question": ...}, "outputs": {"answer": ...}}, ...])
    plus the new question as role/content messages, oldest first. The turns are read by the
    flow's chat input and output names, not by position (a flow has other inputs too)."""
    messages = [{"role": "system", "content": system}] if system else []
    for number, turn in enumerate(chat_history or []):
        try:
            user, assistant = turn["inputs"][input_name], turn["outputs"][output_name]
        except (KeyError, TypeError):
            raise ValueError(
                f"chat_history[{number}] must look like "
                f'{{"inputs": {{"{input_name}": ...}}, "outputs": {{"{output_name}": ...}}}}, '
                f"got {str(turn)[:SNIPPET]}"
            ) from None
        messages += [{"role": "user", "content": str(user)}, {"role": "assistant", "content": str(assistant)}]
    messages.append({"role": "user", "content": question})
    return messages


def ask(settings: EndpointSettings, messages: list[dict], params: GenerationParams | None = None) -> str:
    """Send `messages` to the endpoint and return the assistant's answer."""
    body = post_json(settings, build_payload(settings.payload, messages, params or GenerationParams()))
    try:
        return parse_answer(settings.payload, body)
    except UnexpectedAnswer as e:
        raise MalformedAnswer(
            f"{e}: {json.dumps(body)[:SNIPPET]}; check that the connection's `payload` matches the deployment"
        ) from None


class _Retry(Retry):
    """urllib3's Retry with the server's Retry-After capped: a server asking for a long wait
    gets an error back sooner instead of a hung flow."""

    def get_retry_after(self, response):
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)


def post_json(settings: EndpointSettings, payload: dict) -> object:
    """POST `payload`; retry 429/503 at most `max_retries` times; decode the JSON answer."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.key:
        headers["Authorization"] = f"Bearer {settings.key}"
    if settings.deployment:
        headers["azureml-model-deployment"] = settings.deployment
    retries = int(settings.max_retries)
    retry = _Retry(
        total=retries,
        connect=0,
        read=0,
        status=retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST too: a 429/503 means the request was not processed
        backoff_factor=float(settings.retry_backoff_s),
        raise_on_status=False,  # the last busy answer comes back, to be reported below
    )
    where = settings.endpoint
    try:
        response = urllib3.request(
            "POST",
            where,
            body=json.dumps(payload).encode("utf-8"),
            headers=headers,
            timeout=urllib3.Timeout(connect=float(settings.timeout_s), read=float(settings.timeout_s)),
            retries=retry,
        )
    except MaxRetryError as error:
        # urllib3's NewConnectionError subclasses its TimeoutError (history): test it first.
        if isinstance(error.reason, TimeoutError) and not isinstance(error.reason, NewConnectionError):
            raise EndpointTimeout(
                f"{where} did not answer within {settings.timeout_s:g} s; raise the connection's "
                "timeout_s or ask for fewer max_new_tokens"
            ) from None
        raise EndpointUnreachable(
            f"cannot reach {where} ({error.reason}); is the server running? "
            "Start it with `python -m deploy target=local`, or re-create the connection "
            "with `python -m flow.connect ...` if the address changed"
        ) from None
    if response.status != 200:
        detail = _scrub(error_message(response.data)[:SNIPPET], settings.key)
        raise _http_error(where, response.status, detail, len(response.retries.history))
    try:
        return json.loads(response.data)
    except ValueError:
        text = _scrub(response.data.decode("utf-8", "replace")[:SNIPPET], settings.key)
        raise MalformedAnswer(f"{where} answered with something that is not JSON: {text!r}") from None


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


def error_message(body: bytes) -> str:
    """The message of an error answer: OpenAI's `{"error": {"message": ...}}` (this project's
    servers), else the body as text (Azure's front door answers in other shapes)."""
    text = body.decode("utf-8", "replace")
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text


def _scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text
