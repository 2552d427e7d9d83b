"""The flows' two interfaces on an Agent Framework `Agent`, over the fine-tuned model.

- `standard(agent, question)`: seed A's interface (flow/standard): a question in, the answer out.
- `chat(agent, chat_history, question)`: flow/chat's interface: Prompt flow's chat history
  (`[{"inputs": {"question": ...}, "outputs": {"answer": ...}}, ...]`) and the new question in,
  the answer out; the system prompt is the agent's instructions.

`build_agent` picks the chat client: Agent Framework's own `OpenAIChatCompletionClient` against
the local server's OpenAI-compatible `/v1`, or the project's `ScoreChatClient` against a scoring
route (an Azure ML managed endpoint). Generation is greedy with the flows' defaults, so both
front ends give the same answers for the same questions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from agent_framework import Agent, Message
from agent_framework.openai import OpenAIChatCompletionClient

from agent.score_client import KEY_ENV, ScoreChatClient, endpoint_key
from common.endpoint_client import history_to_messages
from common.payloads import GenerationParams, Shape

AGENT_NAME = "finetune-phi"
NO_KEY = "none"  # the openai client refuses an empty api_key; a server without a key ignores it


@dataclass(frozen=True)
class Backend:
    """Where the fine-tuned model answers: `base_url` (an OpenAI-compatible /v1) or `score_url`."""

    base_url: str = "http://127.0.0.1:8000/v1"
    score_url: str = ""  # set: call this scoring route instead of base_url
    payload: Shape = Shape.seedB  # what the scoring route speaks (Azure ML chat deployments: seedB)
    deployment: str = ""  # pin one deployment of a managed endpoint (azureml-model-deployment)
    model: str = ""  # the /v1 model id; empty: the one the server lists
    key_env: str = KEY_ENV  # the environment variable holding the key
    timeout_s: float = 60.0  # per attempt on the scoring route (the flows' connection default)

    def __post_init__(self):
        for option, url in (("--base-url", self.base_url), ("--score-url", self.score_url)):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"{option} {url!r} must be an http(s) URL")
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout-s {self.timeout_s:g} must be > 0")


def served_model(base_url: str, api_key: str) -> str:
    """The id of the model an OpenAI-compatible server serves (NAME/VERSION for this project's)."""
    import openai

    with openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30) as client:
        return client.models.list().data[0].id


def build_agent(
    backend: Backend, system_prompt: str = "", credential=None, environ: Mapping[str, str] = os.environ
) -> Agent:
    """An Agent over the backend's chat client; `credential` (azure-core) supplies an Entra token
    for a scoring route when the key variable is unset."""
    if backend.score_url:
        client = ScoreChatClient(
            backend.score_url,
            payload=backend.payload,
            deployment=backend.deployment,
            key_env=backend.key_env,
            credential=credential,
            timeout_s=backend.timeout_s,
            environ=environ,
        )
    else:
        key = endpoint_key(backend.key_env, environ=environ) or NO_KEY
        model = backend.model or served_model(backend.base_url, key)
        client = OpenAIChatCompletionClient(model=model, base_url=backend.base_url, api_key=key)
    return client.as_agent(name=AGENT_NAME, instructions=system_prompt or None)


def chat_options(params: GenerationParams) -> dict:
    """The flows' generation parameters as Agent Framework chat options (OpenAI's names)."""
    return {"max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p}


async def standard(agent: Agent, question: str, params: GenerationParams | None = None) -> str:
    response = await agent.run(question, options=chat_options(params or GenerationParams()))
    return response.text


async def chat(
    agent: Agent, chat_history: list, question: str, params: GenerationParams | None = None
) -> str:
    turns = history_to_messages(chat_history, question)  # the same reading of the history as flow/chat
    messages = [Message(role=turn["role"], contents=[turn["content"]]) for turn in turns]
    response = await agent.run(messages, options=chat_options(params or GenerationParams()))
    return response.text
