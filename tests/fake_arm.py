"""Azure Resource Manager replaced at the last layer: a `requests` adapter that answers with the JSON
ARM documents, under azure-core's real pipeline (RequestsTransport, retry, bearer-token policies) and
any client built on it (azure-ai-ml's MLClient, promptflow's workspace connection provider).

Nothing leaves the process. `routes` maps (METHOD, resource path) to a JSON body, a (status, body)
pair, or a function of the request returning one; anything else is ARM's 404.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from urllib.parse import urlparse

import requests
import urllib3
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import RequestsTransport

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg"
WORKSPACE = f"{RESOURCE_GROUP}/providers/Microsoft.MachineLearningServices/workspaces/ws"


def unsigned_jwt(audience: str = "https://management.azure.com") -> str:
    """A token shaped like Entra's; clients that look inside (promptflow checks `aud`) only decode it."""

    def part(claims: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'aud': audience, 'exp': int(time.time()) + 3600})}.c2ln"


class FakeCredential:
    """An azure-core TokenCredential that hands out an unsigned token and never calls Entra."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken(unsigned_jwt(), int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        return AccessTokenInfo(unsigned_jwt(), int(time.time()) + 3600)


def workspace_body(**properties) -> dict:
    """ARM's "Workspaces - Get" answer, as much of it as azure-ai-ml reads."""
    return {
        "id": WORKSPACE,
        "name": "ws",
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": "westeurope",
        "kind": "Default",
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "storageAccount": f"{RESOURCE_GROUP}/providers/Microsoft.Storage/storageAccounts/st",
            "containerRegistry": f"{RESOURCE_GROUP}/providers/Microsoft.ContainerRegistry/registries/cr",
            "keyVault": f"{RESOURCE_GROUP}/providers/Microsoft.KeyVault/vaults/kv",
            "mlFlowTrackingUri": f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{WORKSPACE}",
            "provisioningState": "Succeeded",
            **properties,
        },
    }


Answer = dict | tuple[int, dict] | Callable[[requests.PreparedRequest], "Answer"]


class ArmStandIn(requests.adapters.HTTPAdapter):
    def __init__(self, routes: dict[tuple[str, str], Answer]):
        super().__init__()
        self.routes = {(method, path.lower()): answer for (method, path), answer in routes.items()}
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.sent.append(request)
        answer = self.routes.get((request.method, urlparse(request.url).path.lower()))
        while callable(answer):
            answer = answer(request)
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        if answer is None:
            status, body = 404, {"error": {"code": "ResourceNotFound", "message": urlparse(request.url).path}}
        raw = urllib3.response.HTTPResponse(
            body=io.BytesIO(json.dumps(body).encode()),
            status=status,
            preload_content=False,
            headers={"Content-Type": "application/json"},
        )
        return self.build_response(request, raw)  # requests' own response building

    def transport(self) -> RequestsTransport:
        session = requests.Session()
        session.mount("https://", self)
        return RequestsTransport(session=session)

    def requests_to(self, suffix: str) -> list[requests.PreparedRequest]:
        return [r for r in self.sent if urlparse(r.url).path.lower().endswith(suffix.lower())]
