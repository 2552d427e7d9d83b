"""The flows end to end through promptflow's runner against the REAL local server
(`python -m deploy target=local`, with key auth) serving the tiny model registered in MLflow:
the custom-tool flows over /score, the LLM-tool flow over /v1 through promptflow's own
OpenAIConnection; then a scan that the endpoint key landed in no file of the repo, the run,
promptflow or MLflow."""

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
def server_url(mlflow_store):
    """The real server, key auth on."""
    from deploy.serve.background import serve_in_background

    uri, _ = mlflow_store
    env = {"MLFLOW_TRACKING_URI": uri, "FINETUNE_PHI_ENDPOINT_KEY": KEY}
    with serve_in_background(f"models:/{MODEL_NAME}/1", env=env) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def served(server_url):
    """The real server behind a recording proxy that shows what the custom-tool flows sent."""
    proxy = FakeEndpoint(forward_to=server_url)
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


def openai_chat(pf, **inputs) -> str:
    """flow/openai_chat's answer; the executor streams a chat output, so it may come in pieces."""
    answer = pf.test(flow=FLOW_DIR / "openai_chat", inputs=inputs)["answer"]
    return answer if isinstance(answer, str) else "".join(answer)


def test_the_llm_tool_flow_asks_the_servers_openai_api(pf, server_url, monkeypatch):
    """promptflow's LLM tool through the OpenAIConnection `flow.connect` stored: its answer is the
    openai client's greedy answer to the same system prompt, history and question."""
    import openai

    monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", KEY)
    connect(connect_config(f"target.port={server_url.rsplit(':', 1)[1]}"), pf=pf)
    history = [{"inputs": {"question": "Repeat: amber river"}, "outputs": {"answer": "amber river"}}]
    question = "How many words are in it?"
    answer = openai_chat(
        pf, question=question, chat_history=history, system_prompt="Answer briefly.", max_tokens=8
    )

    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key=KEY, max_retries=0)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Repeat: amber river"},
        {"role": "assistant", "content": "amber river"},
        {"role": "user", "content": question},
    ]
    model = client.models.list().data[0].id
    expected = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    assert answer == expected.choices[0].message.content != ""


def test_the_llm_tool_flow_is_refused_with_a_wrong_key(pf, server_url, monkeypatch):
    monkeypatch.setenv("FINETUNE_PHI_ENDPOINT_KEY", "not-the-key")
    connect(connect_config(f"target.port={server_url.rsplit(':', 1)[1]}"), pf=pf)
    with pytest.raises(Exception, match="missing or wrong key"):
        openai_chat(pf, question="hi")


def test_the_key_is_in_no_file(pf, served, server_url, mlflow_store, isolated_promptflow_home, monkeypatch):
    use(pf, served, "openai", monkeypatch)
    pf.test(flow=FLOW_DIR / "chat", inputs={"question": "hi"})  # a flow run after the key was stored
    connect(connect_config(f"target.port={server_url.rsplit(':', 1)[1]}"), pf=pf)
    openai_chat(pf, question="hi")  # and through the OpenAIConnection
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


def test_the_agent_framework_front_ends_answer_as_the_flows(pf, served, server_url, monkeypatch, tmp_path):
    """Prompt flow's successor (agent/, run in .venv-agent as `make e2e` runs it): `ask` over /v1
    and /score and the HTTP chat with its history give the flows' greedy answers, word for word."""
    from e2e.front_ends import compare_front_ends

    use(pf, served, "openai", monkeypatch)
    questions = ["Repeat: amber river", "How many words are in it?"]
    result = compare_front_ends(questions, server_url, KEY, FLOW_DIR, tmp_path)
    assert result["mismatches"] == []
    assert [len(answers) for answers in result["agent framework"].values()] == [2, 2, 2]
    assert all(isinstance(answer, str) for answer in result["prompt flow"]["chat"])
