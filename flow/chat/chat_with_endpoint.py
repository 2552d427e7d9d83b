"""Prompt flow tool: send the chat history and the new question to the endpoint."""

from promptflow.connections import CustomConnection
from promptflow.core import tool

from common.endpoint_client import EndpointSettings, GenerationParams, ask, history_to_messages


@tool
def chat_with_endpoint(
    connection: CustomConnection,
    question: str,
    chat_history: list,
    system_prompt: str = "",
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    do_sample: bool = False,
) -> str:
    settings = EndpointSettings.from_connection(dict(connection.configs), dict(connection.secrets))
    params = GenerationParams(max_new_tokens, temperature, top_p, do_sample)
    return ask(settings, history_to_messages(chat_history, question, system_prompt), params)
