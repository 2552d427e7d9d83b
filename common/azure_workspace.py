"""Which Azure ML workspace, and an MLClient for it: one definition for train, deploy and flow.

`WorkspaceSettings` is both the Hydra schema of every `...workspace` config node
(`target.workspace` in train, deploy and flow.connect) and the settings object code uses, so
its keys, defaults and comments are written once. Unset names fall back to the environment
variables AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME, and when
none of the three is set, to azure-ai-ml's own `config.json` (the file the studio offers for
download), found by `MLClient.from_config` itself. Credentials come from azure-identity and
are never stored: only their kind is config.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

# Setting name -> the environment variable that supplies it when the config leaves it unset.
ENV_VARS = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "workspace_name": "AZUREML_WORKSPACE_NAME",
}


class Credential(enum.StrEnum):
    default = "default"  # DefaultAzureCredential: env vars, managed identity, az login, ...
    azure_cli = "azure_cli"  # AzureCliCredential (`az login` only), as in the seed tutorial


class WorkspaceSettingsError(ValueError):
    """The workspace cannot be identified; the message says which variable to set."""


@dataclass  # not frozen: OmegaConf makes frozen dataclass nodes read-only, refusing overrides
class WorkspaceSettings:
    # null: $AZURE_SUBSCRIPTION_ID, $AZURE_RESOURCE_GROUP, $AZUREML_WORKSPACE_NAME; when none of
    # the three is set either, azure-ai-ml's config.json (searched upwards from config_path or the cwd).
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace_name: str | None = None
    config_path: str | None = None  # a config.json, or a folder to search upwards from
    credential: Credential = Credential.default

    @classmethod
    def from_config(
        cls, node: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
    ) -> WorkspaceSettings:
        """Settings from a config node (e.g. `cfg.target.workspace`), env vars filling gaps."""
        node = dict(node or {})
        unknown = set(node) - {f.name for f in fields(cls)}
        if unknown:
            raise WorkspaceSettingsError(f"unknown workspace key(s) {sorted(unknown)}")
        credential = node.get("credential") or Credential.default
        if not isinstance(credential, Credential):
            try:
                credential = Credential[str(credential)]
            except KeyError:
                raise WorkspaceSettingsError(
                    f"target.workspace.credential={credential!r}: use one of "
                    + ", ".join(c.name for c in Credential)
                ) from None
        settings = cls(config_path=node.get("config_path"), credential=credential)
        return replace(
            settings, **{name: node.get(name) or environ.get(var) for name, var in ENV_VARS.items()}
        )

    def check(self) -> None:
        """Raise WorkspaceSettingsError unless the workspace is fully identified (no network)."""
        missing = [name for name in ENV_VARS if not getattr(self, name)]
        if not missing:
            return
        if len(missing) < len(ENV_VARS):
            raise WorkspaceSettingsError(
                "Azure ML workspace settings incomplete: set "
                + ", ".join(f"{ENV_VARS[name]} (or target.workspace.{name})" for name in missing)
            )
        self._client_from_config_file(_UnusedCredential())  # finds and reads config.json, calls nothing

    def _client_from_config_file(self, credential):
        """`MLClient.from_config`, its not-found error turned into one that names every way out."""
        from azure.ai.ml import MLClient
        from azure.ai.ml.exceptions import ValidationException

        try:
            return MLClient.from_config(credential, path=self.config_path)
        except ValidationException as e:
            raise WorkspaceSettingsError(
                "No Azure ML workspace configured: set the environment variables "
                + ", ".join(ENV_VARS.values())
                + " (or target.workspace.subscription_id/resource_group/workspace_name), or put the "
                "workspace's config.json (studio: workspace menu > Download config file) in this "
                f"directory or point target.workspace.config_path at it ({e.message})"
            ) from None


class _UnusedCredential:
    """A TokenCredential for a client that is only constructed (to find config.json), never used."""

    def get_token(self, *scopes, **kwargs):
        raise RuntimeError("this MLClient was built only to check the workspace settings")


def make_credential(kind: Credential):
    """An azure-identity credential of the configured kind (constructing it makes no call)."""
    from azure.identity import AzureCliCredential, DefaultAzureCredential

    return AzureCliCredential() if kind is Credential.azure_cli else DefaultAzureCredential()


def ml_client(settings: WorkspaceSettings, credential=None):
    """An MLClient for the workspace; `credential` (any azure-core TokenCredential) is
    injectable, by default one is made from `settings.credential`."""
    from azure.ai.ml import MLClient

    settings.check()
    credential = credential or make_credential(settings.credential)
    if settings.subscription_id:
        return MLClient(
            credential, settings.subscription_id, settings.resource_group, settings.workspace_name
        )
    return settings._client_from_config_file(credential)


class EndpointCredentialsError(RuntimeError):
    """An online endpoint's scoring URI or key cannot be had; the message says why."""


@dataclass(frozen=True)
class EndpointCredentials:
    scoring_uri: str
    key: str
    expires: str | None = None  # aml_token endpoints: when the token stops working

    def __repr__(self) -> str:  # never print the key
        return f"EndpointCredentials(scoring_uri={self.scoring_uri!r}, key='***', expires={self.expires!r})"


def endpoint_credentials(client, endpoint_name: str) -> EndpointCredentials:
    """An online endpoint's scoring URI and key, fetched with azure-ai-ml at use time; callers
    keep them in memory or in promptflow's encrypted connection store, never in a file or log."""
    from azure.ai.ml.entities import EndpointAuthKeys, EndpointAuthToken

    endpoint = client.online_endpoints.get(endpoint_name)
    if not endpoint.scoring_uri:
        raise EndpointCredentialsError(
            f"online endpoint {endpoint_name!r} has no scoring URI yet "
            f"(provisioning state: {endpoint.provisioning_state}); wait for it to finish and re-run"
        )
    credentials = client.online_endpoints.get_keys(endpoint_name)
    if isinstance(credentials, EndpointAuthKeys):
        key, expires = credentials.primary_key, None
    elif isinstance(credentials, EndpointAuthToken):
        key, expires = credentials.access_token, str(credentials.expiry_time_utc)
    else:
        raise EndpointCredentialsError(
            f"endpoint {endpoint_name!r} uses Microsoft Entra (aad_token) auth, which a static key "
            "cannot stand for; create the endpoint with auth_mode key"
        )
    if not key:
        raise EndpointCredentialsError(f"azure-ai-ml returned no key for endpoint {endpoint_name!r}")
    return EndpointCredentials(endpoint.scoring_uri, key, expires)
