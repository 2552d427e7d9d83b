"""Azure Resource Manager calls through azure-core's pipeline, for what azure-ai-ml has no public
call for: an identity's role assignments (deploy's preflight) and a workspace connection that
prompt flow can read (flow.connect). The credential is the MLClient's own.

Requests are `azure.core.rest.HttpRequest`s: their responses have `.json()`. (The old-style request
`PipelineClient.get(...)` builds gets a transport response without it, which is why the role
preflight used to report "not checked" every time.)
"""

from __future__ import annotations

from collections.abc import Iterator

from azure.core import PipelineClient
from azure.core.pipeline.policies import BearerTokenCredentialPolicy, RetryPolicy
from azure.core.rest import HttpRequest

ARM = "https://management.azure.com"


def arm_client(credential, transport=None) -> PipelineClient:
    """A pipeline to ARM with retries and the credential's bearer token; `transport` is injectable."""
    policies = [RetryPolicy(), BearerTokenCredentialPolicy(credential, f"{ARM}/.default")]
    return PipelineClient(ARM, policies=policies, transport=transport)


def arm_request(client: PipelineClient, method: str, path: str, params=None, json=None) -> dict:
    """One ARM call; `path` is a resource id (or an absolute URL, as nextLink is). An error answer
    raises azure-core's HttpResponseError, with ARM's error code and message."""
    url = path if path.startswith("https://") else f"{ARM}{path}"
    response = client.send_request(HttpRequest(method, url, params=params, json=json))
    response.raise_for_status()
    return response.json()


def arm_list(client: PipelineClient, path: str, params: dict) -> Iterator[dict]:
    """Every item of an ARM list, page after page (`nextLink` carries its own query)."""
    page = arm_request(client, "GET", path, params)
    yield from page.get("value", [])
    while page.get("nextLink"):
        page = arm_request(client, "GET", page["nextLink"])
        yield from page.get("value", [])


def arm_error(error) -> str:
    """An azure-core HttpResponseError from ARM in one line: status, ARM's error code and message."""
    detail = f"{error.error.code}: {error.error.message}" if error.error else error.reason
    return f"{error.status_code} ({detail})"
