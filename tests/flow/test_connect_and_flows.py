"""`python -m flow.connect` stores the endpoint in a promptflow CustomConnection (local, or an
Azure ML endpoint through azure-ai-ml's real MLClient, and then in the workspace too, with ARM
answering at the last layer), and both flows run through promptflow's own runner
(PFClient().test) against a loopback endpoint."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from azure.ai.ml import MLClient

from common.payloads import error_body
from flow.connect import connect
from tests.fake_arm import SUBSCRIPTION, WORKSPACE, ArmStandIn, FakeCredential
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
    port, _ = port_and_route(fake_endpoint.url)
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
    # As promptflow records turns: every flow input, the question not first (read by name, not position).
    history = [
        {"inputs": {"system_prompt": "be brief", "question": "q1"}, "outputs": {"answer": "a1"}},
        {"inputs": {"system_prompt": "be brief", "question": "q2"}, "outputs": {"answer": "a2"}},
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


# --- Azure ML: azure-ai-ml's MLClient, azure-core's pipeline and promptflow's workspace connection
# provider, all real; ARM answers its documented JSON at the last layer (tests/fake_arm.py). ---

ENDPOINT = f"{WORKSPACE}/onlineEndpoints/phi3-ft"
CONNECTION = f"{WORKSPACE}/connections/finetune_phi_endpoint"


def workspace_arm(
    auth_mode: str = "Key",
    scoring_uri: str | None = "https://phi3-ft.westeurope.inference.ml.azure.com/score",
):
    """ARM for the workspace: the endpoint and its keys ("Online Endpoints - Get / List Keys"), and
    connections stored as "Workspace Connections - Create" receives them; ARM never returns their
    credentials, only `listsecrets` does ("Workspace Connections - List Secrets")."""
    stored = {}

    def resource(with_secrets: bool):
        properties = dict(stored["properties"])
        if not with_secrets:
            properties.pop("credentials")
        return {"id": CONNECTION, "name": "finetune_phi_endpoint", "properties": properties}

    def put(request):
        stored.update(json.loads(request.body))
        return resource(with_secrets=False)

    return ArmStandIn(
        {
            ("GET", ENDPOINT): {
                "id": ENDPOINT,
                "name": "phi3-ft",
                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                "location": "westeurope",
                "kind": "Managed",
                "identity": {"type": "SystemAssigned"},
                "properties": {
                    "authMode": auth_mode,
                    "scoringUri": scoring_uri,
                    "provisioningState": "Succeeded",
                },
            },
            ("GET", f"{ENDPOINT}/deployments"): {"value": []},
            ("POST", f"{ENDPOINT}/listKeys"): {"primaryKey": KEY, "secondaryKey": "other"},
            ("PUT", CONNECTION): put,
            ("POST", f"{CONNECTION}/listsecrets"): lambda _: (
                resource(with_secrets=True) if stored else (404, {})
            ),
        }
    )


def azure_connect(pf, stand_in, *overrides):
    cfg = connect_config("target=azureml", "target.endpoint_name=phi3-ft", *overrides)
    client = MLClient(FakeCredential(), SUBSCRIPTION, "rg", "ws", transport=stand_in.transport())
    return connect(cfg, client=client, pf=pf, arm_transport=stand_in.transport())


def test_azureml_connection_gets_scoring_uri_and_key_from_azure_ai_ml(pf):
    stand_in = workspace_arm()
    stored = azure_connect(pf, stand_in, "target.deployment=blue", "target.workspace_connection=false")
    configs = dict(stored.configs)
    assert (configs["endpoint"], configs["payload"], configs["deployment"]) == (
        "https://phi3-ft.westeurope.inference.ml.azure.com/score",
        "seedB",
        "blue",
    )
    assert pf.connections.get(stored.name, with_secrets=True).secrets["key"] == KEY
    assert stand_in.requests_to("/listKeys") and not stand_in.requests_to(
        "/connections/finetune_phi_endpoint"
    )


def test_the_workspace_gets_the_connection_a_cloud_flow_resolves(pf, monkeypatch, caplog):
    """What a flow run in the workspace does with `connection: finetune_phi_endpoint`: promptflow's
    WorkspaceConnectionProvider reads it back (listsecrets) into the same CustomConnection."""
    from promptflow.core._connection_provider._workspace_connection_provider import (
        WorkspaceConnectionProvider,
    )

    stand_in = workspace_arm()
    caplog.set_level(logging.DEBUG)
    stored = azure_connect(pf, stand_in)
    (put,) = stand_in.requests_to("/connections/finetune_phi_endpoint")
    assert put.method == "PUT" and "api-version=2025-06-01" in put.url
    body = json.loads(put.body)["properties"]
    assert (body["category"], body["authType"], body["credentials"]) == (
        "CustomKeys",
        "CustomKeys",
        {"keys": {"key": KEY}},
    )
    assert body["metadata"]["azureml.flow.module"] == "promptflow.connections"

    monkeypatch.setattr(
        requests.Session, "get_adapter", lambda session, url: stand_in
    )  # promptflow uses requests
    provider = WorkspaceConnectionProvider(
        subscription_id=SUBSCRIPTION,
        resource_group_name="rg",
        workspace_name="ws",
        credential=FakeCredential(),
    )
    in_the_cloud = provider.get("finetune_phi_endpoint")
    assert type(in_the_cloud).__name__ == "CustomConnection"
    assert dict(in_the_cloud.configs) == dict(stored.configs) and dict(in_the_cloud.secrets) == {"key": KEY}
    assert KEY not in caplog.text


def test_a_refused_workspace_connection_stores_nothing_and_says_how_to_skip_it(pf):
    stand_in = workspace_arm()
    refused = (403, {"error": {"code": "AuthorizationFailed", "message": "no"}})
    stand_in.routes[("PUT", f"{WORKSPACE}/connections/refused_connection".lower())] = refused
    with pytest.raises(
        RuntimeError, match=r"ARM answered 403 \(AuthorizationFailed: no\).*workspace_connection=false"
    ):
        azure_connect(pf, stand_in, "name=refused_connection")
    with pytest.raises(Exception, match="refused_connection"):
        pf.connections.get("refused_connection")


def test_azureml_endpoint_without_keys_is_refused_clearly(pf):
    with pytest.raises(RuntimeError, match="no scoring URI yet"):
        azure_connect(pf, workspace_arm(scoring_uri=None))
    with pytest.raises(RuntimeError, match="aad_token"):
        azure_connect(pf, workspace_arm(auth_mode="AADToken"))


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


def test_the_service_pf_flow_test_leaves_running_is_stopped_by_its_pid(tmp_path, fake_endpoint):
    """The documented `pf flow test`, in a fresh promptflow home with promptflow's own trace
    default: it starts promptflow's service, which outlives it; flow.service stops it by pid.
    promptflow's one warning about its own secret reads: printed by `pf`, filtered where the
    project runs a flow (PFClient().test after importing `flow`, as make e2e does)."""
    import psutil

    from flow.service import service_pids, stop_service

    home = tmp_path / "pf-home"
    home.mkdir()
    (home / "pf_version_check.json").write_bytes((PF_HOME / "pf_version_check.json").read_bytes())
    env = {**os.environ, "FINETUNE_PHI_ENDPOINT_KEY": KEY, "PF_HOME_DIRECTORY": str(home)}
    port, route = port_and_route(fake_endpoint.url)
    in_process = (  # as make e2e runs a flow: `flow` imported (its filters), then promptflow's runner
        "import flow; from promptflow.client import PFClient; "
        f"print(PFClient().test(flow={str(FLOW_DIR / 'chat')!r}, inputs={{'question': 'hi'}}))"
    )
    try:
        outputs = [_run_for_output(command, fake_endpoint, env, tmp_path) for command in (
            [sys.executable, "-m", "flow.connect", f"target.port={port}", f"target.route={route}"],
            [str(Path(sys.executable).parent / "pf"), "flow", "test", "--flow", str(FLOW_DIR / "chat"),
             "--inputs", "question=hi"],
            [sys.executable, "-c", in_process],
        )]  # fmt: skip
        pids = service_pids(home)
    finally:  # never leave it running, whatever failed
        stopped = stop_service(home)
    _, cli, project = outputs
    assert '"answer": "two"' in cli and "{'answer': 'two'}" in project
    warned = [line for line in cli.splitlines() if "warn" in line.lower()]
    assert len(warned) == 1 and "Please use connection.secrets[key]" in warned[0]  # promptflow's own
    assert "warn" not in project.lower()
    assert pids, "promptflow's service was expected to outlive `pf flow test` with tracing on"
    assert stopped == pids
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)
    assert service_pids(home) == []


def _run_for_output(command: list[str], fake_endpoint, env: dict, cwd) -> str:
    fake_endpoint.answer((200, {"choices": [{"message": {"role": "assistant", "content": "two"}}]}))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr
