"""Both flows end to end through promptflow's runner against the REAL local scoring server
(`python -m deploy target=local`, with key auth) serving the tiny model registered in MLflow;
then a scan that the endpoint key landed in no file of the repo, the run, promptflow or MLflow."""

from __future__ import annotations

import secrets

import pytest

from e2e.local import files_containing, repo_files
from flow.connect import connect
from tests.conftest import register_tiny_model
from tests.fake_endpoint import FakeEndpoint
from tests.flow.conftest import FLOW_DIR, connect_config, port_and_route

PROJECT_ROOT = FLOW_DIR.parent
KEY = "e2e-" + secrets.token_urlsafe(18)  # random per session: found only if it leaked this run
MODEL_NAME = "tiny-phi3-flow-e2e"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """The tiny model (untrained: the path is under test, not the answers) registered as
    the recipe registers it, in a store of this module's own."""
    root = tmp_path_factory.mktemp("mlflow")
    return register_tiny_model(root, MODEL_NAME), root


@pytest.fixture(scope="module")
def served(mlflow_store):
    """The real server (key auth on) behind a recording proxy that shows what flows sent."""
    from deploy.local import serve_in_background

    uri, _ = mlflow_store
    env = {"MLFLOW_TRACKING_URI": uri, "FINETUNE_PHI_ENDPOINT_KEY": KEY}
    with serve_in_background(f"models:/{MODEL_NAME}/1", env=env) as base_url:
        proxy = FakeEndpoint(forward_to=base_url)
        yield proxy
        proxy.close()


@pytest.fixture(scope="module")
def pf():
    from promptflow.client import PFClient

    return PFClient()


def use(pf, proxy, payload: str, monkeypatch) -> None:
    monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", KEY)
    port, route = port_and_route(proxy.url)
    connect(connect_config(f"target.port={port}", f"target.route={route}", f"payload={payload}"), pf=pf)
    proxy.requests.clear()


@pytest.mark.parametrize("payload", ["seedA", "seedB", "openai"])
def test_standard_flow_against_the_served_model(pf, served, payload, monkeypatch):
    use(pf, served, payload, monkeypatch)
    out = pf.test(flow=FLOW_DIR / "standard", inputs={"input_data": "What is the first word of: amber river"})
    assert isinstance(out["answer"], str)
    assert len(served.requests) == 1


@pytest.mark.parametrize("payload", ["seedB", "openai"])
def test_chat_flow_history_reaches_the_served_model(pf, served, payload, monkeypatch):
    use(pf, served, payload, monkeypatch)
    first = pf.test(flow=FLOW_DIR / "chat", inputs={"question": "Repeat: amber river", "max_new_tokens": 8})
    history = [{"inputs": {"question": "Repeat: amber river"}, "outputs": {"answer": first["answer"]}}]
    second = pf.test(
        flow=FLOW_DIR / "chat", inputs={"question": "How many words are in it?", "chat_history": history}
    )
    assert isinstance(second["answer"], str)
    body = served.requests[-1]["body"]
    sent = body["messages"] if payload == "openai" else body["input_data"]["input_string"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Repeat: amber river"),
        ("assistant", first["answer"]),
        ("user", "How many words are in it?"),
    ]


def test_wrong_key_is_refused_by_the_real_server(pf, served, monkeypatch):
    use(pf, served, "openai", monkeypatch)
    monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", "not-the-key")
    port, route = port_and_route(served.url)
    connect(connect_config(f"target.port={port}", f"target.route={route}"), pf=pf)
    with pytest.raises(Exception, match=r"refused the request \(401\)"):
        pf.test(flow=FLOW_DIR / "chat", inputs={"question": "hi"})


def test_the_key_is_in_no_file(pf, served, mlflow_store, isolated_promptflow_home, monkeypatch):
    use(pf, served, "openai", monkeypatch)
    pf.test(flow=FLOW_DIR / "chat", inputs={"question": "hi"})  # a flow run after the key was stored
    assert pf.connections.get("finetune_phi_endpoint", with_secrets=True).secrets["key"] == KEY
    _, mlflow_root = mlflow_store
    # The repo (tracked and untracked files), flow/ with any .promptflow/ run outputs,
    # promptflow's home (connections, run records) and the MLflow store with its artifacts.
    roots = [*repo_files(), FLOW_DIR, isolated_promptflow_home, mlflow_root]
    planted = mlflow_root / "planted.txt"  # the scan finds a key where there is one
    planted.write_text(f"x{KEY}x")
    assert files_containing(KEY, roots)[0] == [str(planted)]
    planted.unlink()
    leaks, scanned = files_containing(KEY, roots)
    assert scanned > 50
    assert leaks == []
