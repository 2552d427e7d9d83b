"""A stub wire for azure-ai-ml's MLClient: `online_endpoints.invoke(deployment_name=...)` runs its real
code through azure-core's real pipeline (validate the deployment name, get the endpoint, list its
keys, POST the scoring URI with the `azureml-model-deployment` header); only the HTTP transport is
replaced. Each deployment's /score answer comes from a callable: in the tests, a real
deploy.scoring.score.Scorer of that deployment's model.

The management answers replay the documented bodies (azure-rest-api-specs, Microsoft.MachineLearningServices
stable/2022-10-01 examples OnlineEndpoint/get.json, OnlineEndpoint/listKeys.json,
OnlineDeployment/list.json), with the fields azure-ai-ml 1.35 reads. A managed endpoint routes a
request to the deployment its `azureml-model-deployment` header names ("Test the deployment",
`az ml online-endpoint invoke --deployment-name`) and answers 401 without the endpoint's key.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl

Answer = Callable[[dict], tuple[int, object]]  # the request body -> (HTTP status, JSON body)


class _Response(HttpResponseImpl):
    def __init__(self, request, status: int, body):
        super().__init__(
            request=request,
            internal_response=None,
            status_code=status,
            reason="OK" if status < 400 else "Error",
            content_type="application/json",
            headers={"Content-Type": "application/json"},
            stream_download_generator=None,
        )
        self._content = json.dumps(body).encode()
        self._is_closed = True


class StubWorkspaceTransport(HttpTransport):
    def __init__(self, endpoint: str, deployments: dict[str, Answer], key: str = "k-primary"):
        self.endpoint, self.deployments, self.key = endpoint, deployments, key
        self.scoring_uri = f"https://{endpoint}.westeurope.inference.ml.azure.com/score"
        self.scored: list[str] = []  # the deployment each scoring request was routed to

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass

    def send(self, request, **kwargs):
        path = request.url.split("?")[0]
        if path == self.scoring_uri:
            if request.headers.get("Authorization") != f"Bearer {self.key}":
                return _Response(request, 401, {"message": "key auth failed"})
            deployment = request.headers.get("azureml-model-deployment")
            if deployment not in self.deployments:
                return _Response(request, 404, {"message": f"deployment {deployment} not found"})
            self.scored.append(deployment)
            return _Response(request, *self.deployments[deployment](json.loads(request.content)))
        endpoint = f"/onlineEndpoints/{self.endpoint}"
        if request.method == "GET" and path.endswith(f"{endpoint}/deployments"):
            return _Response(
                request, 200, {"value": [{"name": n, "location": "westeurope"} for n in self.deployments]}
            )
        if request.method == "GET" and path.endswith(endpoint):
            properties = {"authMode": "Key", "scoringUri": self.scoring_uri, "provisioningState": "Succeeded"}
            return _Response(
                request, 200, {"name": self.endpoint, "location": "westeurope", "properties": properties}
            )
        if request.method == "POST" and path.endswith(f"{endpoint}/listKeys"):
            return _Response(request, 200, {"primaryKey": self.key, "secondaryKey": "k-secondary"})
        return _Response(
            request, 404, {"error": {"code": "NotFound", "message": f"stub: {request.method} {path}"}}
        )
