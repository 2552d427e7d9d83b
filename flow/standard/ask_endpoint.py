"""Prompt flow tool: send one prompt to the endpoint in the connection, return the answer."""

from promptflow.connections import CustomConnection
from promptflow.core import tool

from common.endpoint_client import EndpointSettings, GenerationParams, ask


@tool
def ask_endpoint(
    connection: CustomConnection,
    input_data: str,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    do_sample: bool = False,
) -> str:
    settings = EndpointSettings.from_connection(dict(connection.configs), dict(connection.secrets))
    params = GenerationParams(max_new_tokens, temperature, top_p, do_sample)
    return ask(settings, [{"role": "user", "content": input_data}], params)
