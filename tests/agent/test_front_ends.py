"""Both Agent Framework front ends (the standard and the chat interface) through the REAL
`agent-framework` package in .venv-agent, against the REAL local server (`python -m deploy
target=local`, key auth) serving the tiny model registered in MLflow. The reference answer is
the `openai` client's greedy answer from /v1 for the same messages; traces go to a real
`mlflow server` and are read back with MLflow's client."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from common.paths import PROJECT_ROOT
from deploy.serve.background import free_port, wait_for_health
from tests.agent.conftest import run_agent
from tests.conftest import register_tiny_model
from tests.train.azure_like_tracking import MlflowServer

KEY = "agent-" + secrets.token_urlsafe(18)
MODEL_NAME = "tiny-phi3-agent"
SERVED = f"{MODEL_NAME}/1"  # the id the server gives the registered version it serves
QUESTION = "What is the first word of: amber river"
HISTORY = [{"inputs": {"question": "Repeat: amber river"}, "outputs": {"answer": "amber river"}}]
FOLLOW_UP = "How many words are in it?"
TOKENS = "12"  # short answers: the path is under test, not the untrained model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    from deploy.serve.background import serve_in_background

    uri = register_tiny_model(tmp_path_factory.mktemp("mlflow"), MODEL_NAME)
    with serve_in_background(
        f"models:/{MODEL_NAME}/1", env={"MLFLOW_TRACKING_URI": uri, "FINETUNE_PHI_ENDPOINT_KEY": KEY}
    ) as url:
        yield url


def reference(server_url: str, messages: list[dict], max_tokens: int = int(TOKENS)) -> str:
    """The openai client's greedy answer, asked directly of /v1."""
    import openai

    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key=KEY, max_retries=0)
    completion = client.chat.completions.create(
        model=SERVED, messages=messages, max_tokens=max_tokens, temperature=0, top_p=1
    )
    return completion.choices[0].message.content


def history_messages() -> list[dict]:
    return [
        {"role": "user", "content": "Repeat: amber river"},
        {"role": "assistant", "content": "amber river"},
        {"role": "user", "content": FOLLOW_UP},
    ]


def backend(server_url: str, route: str) -> list[str]:
    if route == "v1":
        return ["--base-url", f"{server_url}/v1"]
    return ["--score-url", f"{server_url}/score", "--payload", route]


@pytest.mark.parametrize("route", ["v1", "openai", "seedB", "seedA"])
def test_ask_answers_as_the_model_does(agent_python, server_url, route):
    """Agent Framework's OpenAI client over /v1, and the project's ScoreChatClient over /score in
    each payload shape, give the model's own greedy answer."""
    done = run_agent(
        agent_python,
        "ask",
        QUESTION,
        *backend(server_url, route),
        "--max-new-tokens",
        TOKENS,
        env={"FINETUNE_PHI_ENDPOINT_KEY": KEY},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference(server_url, [{"role": "user", "content": QUESTION}]) + "\n"


@pytest.mark.parametrize("route", ["v1", "seedB"])
def test_terminal_chat_sends_the_history(agent_python, server_url, route):
    done = run_agent(
        agent_python,
        "chat",
        *backend(server_url, route),
        "--max-new-tokens",
        TOKENS,
        env={"FINETUNE_PHI_ENDPOINT_KEY": KEY},
        stdin="Repeat: amber river\n" + FOLLOW_UP + "\n\n",
    )
    assert done.returncode == 0, done.stderr
    # stdout: input()'s prompt, then each answer: "you> assistant> A1\nyou> assistant> A2\nyou> "
    answers = [
        turn.removeprefix("assistant> ").removesuffix("\n") for turn in done.stdout.split("you> ")[1:-1]
    ]
    first = reference(server_url, [{"role": "user", "content": "Repeat: amber river"}])
    history = [{"role": "user", "content": "Repeat: amber river"}, {"role": "assistant", "content": first}]
    assert answers == [first, reference(server_url, [*history, {"role": "user", "content": FOLLOW_UP}])]


@pytest.mark.parametrize("route", ["v1", "openai"])
def test_a_wrong_key_exits_1_with_one_line(agent_python, server_url, route):
    # --model skips the models lookup: the chat call is under test
    model = ["--model", SERVED] if route == "v1" else []
    done = run_agent(
        agent_python,
        "ask",
        QUESTION,
        *backend(server_url, route),
        *model,
        env={"FINETUNE_PHI_ENDPOINT_KEY": "not-the-key"},
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "401" in done.stderr and "not-the-key" not in done.stderr


def test_an_azure_credential_supplies_the_token_when_no_key_is_set(agent_python, server_url):
    """An Azure ML endpoint with Entra auth: the token of the injected credential is the bearer."""
    script = f"""
import asyncio
from azure.core.credentials import AccessToken
from agent.agents import Backend, build_agent, standard
class Credential:
    scopes = []
    def get_token(self, *scopes, **kwargs):
        self.scopes += scopes
        return AccessToken({KEY!r}, int(1e10))
credential = Credential()
agent = build_agent(Backend(score_url={server_url + "/score"!r}, payload="seedB"), credential=credential, environ={{}})
print(asyncio.run(standard(agent, {QUESTION!r})))
print(credential.scopes)
"""
    done = subprocess.run(
        [agent_python, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    answer, scopes = done.stdout.rsplit("\n", 2)[:2]
    assert scopes == "['https://ml.azure.com/.default']"
    assert answer == reference(
        server_url, [{"role": "user", "content": QUESTION}], max_tokens=64
    )  # the default


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def tracking(tmp_path):
    server = MlflowServer(tmp_path, free_port())
    yield server
    server.stop()


def test_http_front_end_answers_refuses_bad_input_and_traces_to_mlflow(
    agent_python, server_url, tracking, tmp_path
):
    port = free_port()
    log = (tmp_path / "front-end.log").open("w")
    front_end = subprocess.Popen(
        [
            agent_python,
            "-m",
            "agent",
            "serve",
            "--port",
            str(port),
            *backend(server_url, "v1"),
            "--max-new-tokens",
            TOKENS,
            "--trace-to",
            tracking.url,
            "--experiment",
            "agent-test",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "FINETUNE_PHI_ENDPOINT_KEY": KEY},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, front_end, timeout=120)
        for body, status in (
            (b"{not json", 400),
            (b'{"question": ""}', 400),
            (b'{"question": "x", "chat_history": [1]}', 400),
        ):
            started = time.monotonic()
            assert post(f"{url}/score", body)[0] == status
            assert time.monotonic() - started < 5  # refused at once, never sent to the model
        assert post(f"{url}/score", b"x", {"Content-Length": str(2 << 20)})[0] == 413
        status, answer = post(
            f"{url}/score", json.dumps({"question": FOLLOW_UP, "chat_history": HISTORY}).encode()
        )
        assert status == 200, answer
        assert answer["answer"] == reference(server_url, history_messages())
    finally:
        front_end.terminate()  # SIGTERM: it sends the spans still queued, then exits
        front_end.wait(60)
        log.close()
    assert front_end.returncode == 0, (tmp_path / "front-end.log").read_text()
    assert_traced_to(tracking.url, answer["conversation_id"])


def assert_traced_to(tracking_url: str, conversation_id: str) -> None:
    """The turn's trace is in MLflow: its root span names the conversation, and its chat span
    the model version that answered."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_url)
    experiment = client.get_experiment_by_name("agent-test")
    traces = client.search_traces(locations=[experiment.experiment_id])
    turns = [
        t
        for t in traces
        if any(s.attributes.get("finetune_phi.conversation_id") == conversation_id for s in t.data.spans)
    ]
    assert len(turns) == 1
    spans = {s.name.split(" ")[0]: s for s in turns[0].data.spans}
    assert spans["finetune_phi.turn"].parent_id is None
    assert spans["finetune_phi.turn"].attributes["finetune_phi.front_end"] == "http"
    assert spans["chat"].attributes["gen_ai.response.model"] == SERVED
    assert spans["invoke_agent"].attributes["gen_ai.agent.name"] == "finetune-phi"
