"""An Agent Framework chat client for a scoring route: an Azure ML managed online endpoint's
`/score` (or the local server's), in the payload shape the deployment speaks.

The HTTP side is the project's own endpoint client (`common.endpoint_client`, shared with the
Prompt flow tools), so retries, timeouts and error messages are the same in both front ends.
The key comes from the environment (`FINETUNE_PHI_ENDPOINT_KEY` unless told otherwise) or,
where that is unset, as a Microsoft Entra token from an Azure credential (endpoints with
auth_mode aad_token): never from a config file or the command line.

    client = ScoreChatClient("https://NAME.REGION.inference.ml.azure.com/score", payload="seedB")
    agent = client.as_agent(name="finetune-phi")
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from agent_framework import (
    BaseChatClient,
    ChatMiddlewareLayer,
    ChatResponse,
    FunctionInvocationLayer,
    Message,
)
from agent_framework.observability import ChatTelemetryLayer

from common.endpoint_client import EndpointSettings, MalformedAnswer, post_json
from common.payloads import GenerationParams, Shape, UnexpectedAnswer, build_payload, parse_answer

KEY_ENV = "FINETUNE_PHI_ENDPOINT_KEY"
AZURE_ML_SCOPE = "https://ml.azure.com/.default"  # the audience of Azure ML endpoint tokens


def endpoint_key(key_env: str = KEY_ENV, credential=None, environ: Mapping[str, str] = os.environ) -> str:
    """The key in `key_env`; else an Entra token from `credential` (anything with azure-core's
    `get_token`); else none (a local server started without a key)."""
    if environ.get(key_env):
        return environ[key_env]
    return credential.get_token(AZURE_ML_SCOPE).token if credential is not None else ""


def generation_params(options: Mapping[str, Any]) -> GenerationParams:
    """Agent Framework's chat options as the scoring contract's parameters (greedy by default,
    as the flows)."""
    defaults = GenerationParams()
    return GenerationParams(
        max_new_tokens=options.get("max_tokens") or defaults.max_new_tokens,
        temperature=options.get("temperature", defaults.temperature),
        top_p=options.get("top_p", defaults.top_p),
    )


class ScoreChatClient(FunctionInvocationLayer, ChatMiddlewareLayer, ChatTelemetryLayer, BaseChatClient):
    """Sends the conversation to a scoring URL; the answer comes back as one assistant message.
    Composed from the same layers as Agent Framework's own clients (tools, middleware, and
    OpenTelemetry spans: ChatTelemetryLayer): the span names the
    deployment that answered (`azureml-model-deployment`) or the model an OpenAI-shaped answer
    names."""

    OTEL_PROVIDER_NAME = "azure.ai.ml"

    def __init__(
        self,
        endpoint: str,
        *,
        payload: Shape | str = Shape.seedB,
        deployment: str = "",
        key_env: str = KEY_ENV,
        credential=None,
        timeout_s: float = 60.0,
        environ: Mapping[str, str] = os.environ,
    ):
        super().__init__()
        self.settings = EndpointSettings(
            endpoint, payload=payload, deployment=deployment, timeout_s=timeout_s
        )
        self.key_env, self.credential, self.environ = key_env, credential, environ

    def _inner_get_response(
        self, *, messages: Sequence[Message], stream: bool, options: Mapping[str, Any], **kwargs: Any
    ):
        if stream:
            raise ValueError("a scoring route answers whole: run the agent with stream=False")
        return self._answer(messages, options)

    async def _answer(self, messages: Sequence[Message], options: Mapping[str, Any]) -> ChatResponse:
        options = await self._validate_options(options)
        turns = [{"role": str(m.role), "content": m.text} for m in messages]
        payload = build_payload(self.settings.payload, turns, generation_params(options))
        key = endpoint_key(self.key_env, self.credential, self.environ)
        settings = dataclasses.replace(self.settings, key=key)
        body = await asyncio.to_thread(post_json, settings, payload)
        try:
            answer = parse_answer(settings.payload, body)
        except UnexpectedAnswer as e:
            raise MalformedAnswer(f"{e}; check that --payload matches the deployment") from None
        model = body.get("model") if isinstance(body, dict) else None
        return ChatResponse(
            messages=[Message(role="assistant", contents=[answer])],
            model=model or settings.deployment or settings.endpoint,
            finish_reason="stop",
        )
