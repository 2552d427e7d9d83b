"""`python -m flow.connect` stores the endpoint in a promptflow CustomConnection (local, or an
Azure ML endpoint through azure-ai-ml's real MLClient over a recorded HTTP transport), and
both flows run through promptflow's own runner (PFClient().test) against a loopback endpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
import requests

from common.payloads import error_body
from flow.connect import connect
from tests.flow.conftest import FLOW_DIR, PF_HOME, connect_config, port_and_route

KEY = "s3cret-endpoint-key-for-tests"


@pytest.fixture(scope="module")
def pf():
    from promptflow.client import PFClient

    return PFClient()


@pytest.fixture
def local_connection(pf, fake_endpoint, monkeypatch):
    """Store the fake endpoint as the flows' connection, the way a user does."""

    def make(payload: str = "openai", key: str | None = KEY):
        if key is None:
            monkeypatch.delenv("FINETUNE_PHI_ENDPOINT_KEY", raising=False)
        else:
            monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", key)
        port, route = port_and_route(fake_endpoint.url)
        cfg = connect_config(
            f"target.port={port}", f"target.route={route}", f"payload={payload}", "max_retries=0"
        )
        return connect(cfg, pf=pf)

    return make


def test_local_connection_keeps_the_key_secret(pf, local_connection, fake_endpoint, isolated_promptflow_home):
    stored = local_connection("seedB")
    assert stored.name == "finetune_phi_endpoint"
    assert dict(stored.configs)["endpoint"] == fake_endpoint.url
    assert dict(stored.configs)["payload"] == "seedB"
    assert KEY not in json.dumps(dict(stored.secrets))  # promptflow scrubs what it returns
    assert pf.connections.get(stored.name, with_secrets=True).secrets["key"] == KEY
    # The local server also speaks OpenAI's API: an OpenAIConnection for promptflow's LLM tool.
    openai = pf.connections.get("finetune_phi_openai", with_secrets=True)
    port = fake_endpoint.url.split(":")[2].split("/")[0]
    assert (openai.type, openai.base_url, openai.api_key) == ("OpenAI", f"http://127.0.0.1:{port}/v1", KEY)
    # Encrypted at rest: the plain key is in no file of promptflow's home.
    for path in isolated_promptflow_home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path

    no_key = local_connection("openai", key=None)
    assert dict(no_key.configs)["auth"] == "none"


def test_reconnecting_elsewhere_says_what_it_replaced(pf, local_connection, fake_endpoint, caplog):
    local_connection("openai")
    connect(connect_config("target.port=1"), pf=pf)
    assert f"pointed at {fake_endpoint.url}; it now points at http://127.0.0.1:1/score" in caplog.text


def test_standard_flow_sends_one_prompt_with_the_flow_inputs(pf, local_connection, fake_endpoint):
    local_connection("seedA")
    fake_endpoint.answer((200, ["rabbit"]))
    out = pf.test(
        flow=FLOW_DIR / "standard", inputs={"input_data": "first word of: rabbit olive", "max_new_tokens": 5}
    )
    assert out == {"answer": "rabbit"}
    (request,) = fake_endpoint.requests
    assert request["body"] == {
        "input_data": ["first word of: rabbit olive"],
        "params": {"max_new_tokens": 5, "temperature": 0.0, "top_p": 1.0, "do_sample": False},
    }
    assert request["headers"]["authorization"] == f"Bearer {KEY}"


def test_chat_flow_sends_the_history(pf, local_connection, fake_endpoint):
    local_connection("openai")
    fake_endpoint.answer((200, {"choices": [{"message": {"role": "assistant", "content": "a3"}}]}))
    history = [
        {"inputs": {"question": "q1"}, "outputs": {"answer": "a1"}},
        {"inputs": {"question": "q2"}, "outputs": {"answer": "a2"}},
    ]
    inputs = {"question": "q3", "chat_history": history, "system_prompt": "be brief", "temperature": 0.7}
    inputs["do_sample"] = True
    assert pf.test(flow=FLOW_DIR / "chat", inputs=inputs) == {"answer": "a3"}
    body = fake_endpoint.requests[0]["body"]
    assert [m["content"] for m in body["messages"]] == ["be brief", "q1", "a1", "q2", "a2", "q3"]
    assert (body["max_tokens"], body["temperature"]) == (64, 0.7)


def test_flow_errors_reach_the_user_without_the_key(pf, local_connection, fake_endpoint):
    local_connection("openai")
    fake_endpoint.answer((401, error_body("missing or wrong key", code="invalid_api_key")))
    with pytest.raises(Exception, match="key is missing or wrong") as error:
        pf.test(flow=FLOW_DIR / "chat", inputs={"question": "hi"})
    assert KEY not in str(error.value)


def test_the_connection_bounds_the_retries(pf, local_connection, fake_endpoint):
    local_connection("openai")  # max_retries=0 in the connection's configs
    fake_endpoint.answer((503, error_body("the server is busy", "server_error", code="queue_full")))
    with pytest.raises(Exception, match=r"busy \(503\) after 0 retries"):
        pf.test(flow=FLOW_DIR / "chat", inputs={"question": "hi"})
    assert len(fake_endpoint.requests) == 1


# --- Azure ML: azure-ai-ml's own MLClient and entities, only the HTTP transport is ours. ---

ENDPOINT_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws/onlineEndpoints/phi3-ft"
)


def azure_rest_answers(auth_mode: str, scoring_uri: str | None) -> dict:
    endpoint = {
        "id": ENDPOINT_ID,
        "name": "phi3-ft",
        "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
        "location": "westeurope",
        "kind": "Managed",
        "identity": {"type": "SystemAssigned"},
        "tags": {},
        "properties": {"authMode": auth_mode, "scoringUri": scoring_uri, "provisioningState": "Succeeded"},
    }
    return {
        ("GET", "/onlineEndpoints/phi3-ft"): endpoint,
        ("GET", "/onlineEndpoints/phi3-ft/deployments"): {"value": []},
        ("POST", "/onlineEndpoints/phi3-ft/listKeys"): {"primaryKey": KEY, "secondaryKey": "other"},
    }


def ml_client(answers: dict, calls: list):
    from azure.ai.ml import MLClient
    from azure.core.credentials import AccessToken
    from azure.core.pipeline.transport import HttpTransport
    from azure.core.rest._requests_basic import RestRequestsTransportResponse

    class FakeCredential:
        def get_token(self, *scopes, **kwargs):
            return AccessToken("not-a-real-token", int(time.time()) + 3600)

    class RecordedArm(HttpTransport):
        """Answers ARM requests from `answers`; nothing leaves the process."""

        def send(self, request, **kwargs):
            path = request.url.split("/workspaces/ws", 1)[1].split("?", 1)[0]
            calls.append((request.method, path))
            response = requests.Response()
            response.status_code = 200
            response.headers["Content-Type"] = "application/json"
            response.raw = io.BytesIO(json.dumps(answers[(request.method, path)]).encode())
            response.url = request.url
            return RestRequestsTransportResponse(request=request, internal_response=response)

        def open(self):
            pass

        def close(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *args):
            pass

    return MLClient(
        FakeCredential(), "00000000-0000-0000-0000-000000000000", "rg", "ws", transport=RecordedArm()
    )


def test_azureml_connection_gets_scoring_uri_and_key_from_azure_ai_ml(pf):
    calls = []
    uri = "https://phi3-ft.westeurope.inference.ml.azure.com/score"
    client = ml_client(azure_rest_answers("Key", uri), calls)
    cfg = connect_config("target=azureml", "target.endpoint_name=phi3-ft", "target.deployment=blue")
    stored = connect(cfg, client=client, pf=pf)
    configs = dict(stored.configs)
    assert (configs["endpoint"], configs["payload"], configs["deployment"]) == (uri, "seedB", "blue")
    assert pf.connections.get(stored.name, with_secrets=True).secrets["key"] == KEY
    assert ("POST", "/onlineEndpoints/phi3-ft/listKeys") in calls


def test_azureml_endpoint_without_keys_is_refused_clearly(pf):
    no_uri = ml_client(azure_rest_answers("Key", None), [])
    cfg = connect_config("target=azureml", "target.endpoint_name=phi3-ft")
    with pytest.raises(RuntimeError, match="no scoring URI yet"):
        connect(cfg, client=no_uri, pf=pf)
    aad = ml_client(azure_rest_answers("AADToken", "https://x/score"), [])
    with pytest.raises(RuntimeError, match="aad_token"):
        connect(cfg, client=aad, pf=pf)


@pytest.mark.slow
def test_connect_cli_turns_telemetry_off_and_prints_no_key(tmp_path):
    """The documented command, in a subprocess with a fresh promptflow home of its own."""
    home, cwd = tmp_path / "pf-home", tmp_path / "cwd"
    cwd.mkdir()
    home.mkdir()  # with promptflow's version-check cache, so it does not ask pypi.org
    (home / "pf_version_check.json").write_bytes((PF_HOME / "pf_version_check.json").read_bytes())
    env = {**os.environ, "FINETUNE_PHI_ENDPOINT_KEY": KEY, "PF_HOME_DIRECTORY": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "flow.connect", "target.port=1", "name=cli_check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "connection 'cli_check' -> http://127.0.0.1:1/score (payload openai)" in result.stdout
    assert "connection 'finetune_phi_openai' -> http://127.0.0.1:1/v1 (OpenAI API" in result.stdout
    assert "nothing answers there yet" in result.stdout
    assert KEY not in result.stdout + result.stderr
    assert "enabled: false" in (home / "pf.yaml").read_text()
    assert list(cwd.iterdir()) == []  # no Hydra output folder, no log file
