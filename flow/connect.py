"""Create or update the promptflow connections the flows call the endpoint through.

python -m flow.connect                                      # local server, 127.0.0.1:8000
python -m flow.connect target.port=8001 payload=seedB
python -m flow.connect target=azureml target.endpoint_name=phi3-ft

The CustomConnection (`name`, for flow/chat and flow/standard) holds `endpoint`, `payload`,
`timeout_s`, `max_retries` (and `deployment`) in its configs and the key in its secrets. For the
local server, an OpenAIConnection (`openai_name`, for flow/openai_chat: promptflow's own LLM
tool) holds the server's OpenAI base URL (http://HOST:PORT/v1) and the same key as its api_key;
Azure's deployment serves only /score, so there is none for it; its CustomConnection is also
created in the Azure ML workspace, where flows run in the cloud look it up by name. promptflow encrypts secrets in
its local store (~/.promptflow, or PF_HOME_DIRECTORY); the key is never printed, logged or
written elsewhere.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from common.endpoint_client import EndpointSettings
from flow.config import register_configs

log = logging.getLogger(__name__)

NO_KEY = "none"  # promptflow requires a non-empty secret; configs.auth=none says to send none
CONNECTIONS_API = "2025-06-01"  # the version REST "Workspace Connections - Create" documents


@dataclass(frozen=True)
class Endpoint:
    """Where a deploy target is served and the key it wants (empty: no auth)."""

    url: str
    key: str
    deployment: str = ""
    openai_base_url: str = ""  # where it also speaks OpenAI's API (the local server's /v1)


def local_endpoint(target: DictConfig, environ=os.environ) -> Endpoint:
    """The local server's scoring URL and OpenAI base URL; its key from the variable the server reads."""
    base = f"http://{target.host}:{target.port}"
    return Endpoint(
        url=base + target.route, key=environ.get(target.key_env, ""), openai_base_url=base + "/v1"
    )


def azureml_endpoint(target: DictConfig, client) -> Endpoint:
    """An Azure ML online endpoint's scoring URI and key, fetched with azure-ai-ml's MLClient."""
    from common.azure_workspace import endpoint_credentials

    credentials = endpoint_credentials(client, target.endpoint_name)
    if credentials.expires:
        log.warning(
            "endpoint %r uses auth_mode aml_token: the stored token expires at %s; re-run this "
            "command after that (or switch the endpoint to auth_mode key)",
            target.endpoint_name,
            credentials.expires,
        )
    return Endpoint(url=credentials.scoring_uri, key=credentials.key, deployment=target.deployment or "")


def build_connection(cfg: DictConfig, endpoint: Endpoint):
    """The CustomConnection entity: configs are plain strings, the key is the only secret."""
    from promptflow.entities import CustomConnection

    configs = {
        "endpoint": endpoint.url,
        "payload": cfg.payload.value,
        "timeout_s": str(cfg.timeout_s),
        "max_retries": str(cfg.max_retries),
        "auth": "bearer" if endpoint.key else "none",
        "target": str(cfg.target.name),
    }
    if endpoint.deployment:
        configs["deployment"] = endpoint.deployment
    EndpointSettings.from_connection(configs, {"key": endpoint.key})  # fail here, not mid-chat
    return CustomConnection(name=cfg.name, configs=configs, secrets={"key": endpoint.key or NO_KEY})


def workspace_connection_body(connection) -> dict:
    """The ARM body of `connection` as prompt flow reads it back from a workspace.

    REST "Workspace Connections - Create" with CustomKeysWorkspaceConnectionProperties: the secrets
    under credentials.keys, the configs in metadata, plus the `azureml.flow.*` keys promptflow's
    WorkspaceConnectionProvider uses to rebuild a CustomConnection. azure-ai-ml 1.35 has no custom
    connection entity: its WorkspaceConnection(type="custom") sends authType ApiKey, which that
    provider cannot read ("'WorkspaceConnectionApiKey' object has no attribute 'keys'").
    """
    return {
        "properties": {
            "category": "CustomKeys",
            "authType": "CustomKeys",
            "target": connection.configs["endpoint"],
            "credentials": {"keys": dict(connection.secrets)},
            "metadata": {
                **connection.configs,
                "azureml.flow.connection_type": "Custom",
                "azureml.flow.module": "promptflow.connections",
            },
            "isSharedToAll": True,  # as azure-ai-ml creates connections: for every user of the workspace
        }
    }


def create_workspace_connection(client, connection, transport=None) -> dict:
    """Create or replace `connection` in the MLClient's workspace (ARM PUT with its credential);
    returns ARM's answer, which carries no secrets. `transport` (azure-core) is injectable."""
    from common.azure_arm import arm_client, arm_request

    workspace = (
        f"/subscriptions/{client.subscription_id}/resourceGroups/{client.resource_group_name}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{client.workspace_name}"
    )
    return arm_request(
        arm_client(client._credential, transport),
        "PUT",
        f"{workspace}/connections/{connection.name}",
        {"api-version": CONNECTIONS_API},
        json=workspace_connection_body(connection),
    )


def build_openai_connection(cfg: DictConfig, endpoint: Endpoint):
    """promptflow's OpenAIConnection for the LLM tool: the server's /v1 and its key (any non-empty
    api_key for a server without one: the openai client refuses an empty key)."""
    from promptflow.connections import OpenAIConnection

    return OpenAIConnection(
        name=cfg.openai_name, api_key=endpoint.key or NO_KEY, base_url=endpoint.openai_base_url
    )


def connect(cfg: DictConfig, client=None, pf=None, environ=os.environ, arm_transport=None):
    """Fetch the target's endpoint and store it as `cfg.name` (and, where it speaks OpenAI's API,
    as `cfg.openai_name`); returns the stored CustomConnection (its secrets scrubbed, as
    promptflow returns them). A local target's key is read from `environ` (the variable
    `target.key_env` names). An Azure ML target's connection is also created in the workspace
    (`target.workspace_connection`). `client` (an MLClient), `pf` (a PFClient) and
    `arm_transport` (azure-core) are injectable."""
    if cfg.target.name == "local":
        endpoint = local_endpoint(cfg.target, environ)
    else:
        from common.azure_workspace import WorkspaceSettings, ml_client

        name = cfg.target.endpoint_name  # a missing name fails first, naming the key
        client = client or ml_client(WorkspaceSettings.from_config(cfg.target.workspace))
        log.info("fetching the scoring URI and key of endpoint %s", name)
        endpoint = azureml_endpoint(cfg.target, client)
    connection = build_connection(cfg, endpoint)
    if cfg.telemetry is not None:
        from promptflow._sdk._configuration import Configuration  # what `pf config set` uses

        Configuration.get_instance().set_config("telemetry.enabled", bool(cfg.telemetry))
    if pf is None:
        from promptflow.client import PFClient

        pf = PFClient()
    previous = _stored_endpoint(pf, connection.name)
    if previous and previous != connection.configs["endpoint"]:
        log.warning(
            "connection %r pointed at %s; it now points at %s", connection.name, previous, endpoint.url
        )
    if cfg.target.name == "azureml" and cfg.target.workspace_connection:
        from azure.core.exceptions import HttpResponseError

        from common.azure_arm import arm_error

        try:
            create_workspace_connection(client, connection, arm_transport)
        except HttpResponseError as e:
            raise RuntimeError(
                f"creating connection {connection.name!r} in workspace {client.workspace_name}: ARM answered "
                f"{arm_error(e)}; nothing was stored. Fix that, or keep the connection local only: "
                "target.workspace_connection=false"
            ) from None
        log.info("connection %r created in workspace %s", connection.name, client.workspace_name)
    pf.connections.create_or_update(connection)
    if endpoint.openai_base_url:
        pf.connections.create_or_update(build_openai_connection(cfg, endpoint))
    return pf.connections.get(connection.name, with_secrets=False)  # scrubbed: the key stays in the store


def _stored_endpoint(pf, name: str) -> str | None:
    from promptflow.exceptions import UserErrorException

    try:
        return dict(pf.connections.get(name, with_secrets=False).configs).get("endpoint")
    except UserErrorException:  # ConnectionNotFoundError: nothing stored under that name yet
        return None


def is_serving(url: str, timeout_s: float = 2.0) -> bool:
    """Whether the local server's /health answers (a hint only: it may start later)."""
    health = url.rsplit("/", 1)[0] + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="connect")
def main(cfg: DictConfig) -> None:
    stored = connect(cfg)
    configs = dict(stored.configs)
    print(f"connection {stored.name!r} -> {configs['endpoint']} (payload {configs['payload']})")
    if configs["auth"] == "bearer":
        print("  key: stored encrypted in promptflow's connection store (not shown)")
    else:
        print(
            f"  key: none (${cfg.target.get('key_env', 'KEY')} was not set; the server must run without one)"
        )
    if cfg.target.name == "azureml" and cfg.target.workspace_connection:
        print(
            f"  also in the Azure ML workspace as {stored.name!r}, for flows run there (key kept by the workspace)"
        )
    if cfg.target.name == "local":
        base_url = local_endpoint(cfg.target).openai_base_url
        print(
            f"connection {cfg.openai_name!r} -> {base_url} (OpenAI API, for flow/openai_chat; the same key)"
        )
        if not is_serving(configs["endpoint"]):
            print("  note: nothing answers there yet; start it with `python -m deploy target=local`")
    if cfg.telemetry is not None:
        print(
            f"  promptflow telemetry: {'on' if cfg.telemetry else 'off'} (pf config set telemetry.enabled=...)"
        )
    print(
        '  try it: pf flow test --flow flow/chat --inputs question="What is the first word of: amber river"'
    )
    if cfg.target.name == "local":
        print(
            '          pf flow test --flow flow/openai_chat --inputs question="What is the first word of: amber river"'
        )


if __name__ == "__main__":
    main()
