"""score.py under Azure ML's real inference server, offline: `azmlinfsrv` from a venv built from
docker/serve.requirements.txt, the deployment's code snapshot as `python -m deploy` uploads it,
and the registered model mounted where a managed online deployment mounts it."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from common.paths import PROJECT_ROOT
from deploy.azure.entities import scoring_code_dir
from deploy.serve.background import free_port
from tests.deploy.scoring.azmlinfsrv import AzmlInfSrv, serve_venv

pytestmark = pytest.mark.slow
KEY = "endpoint-key-4b1d-never-logged"


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    import mlflow

    venv = serve_venv(
        PROJECT_ROOT / "docker" / "serve.requirements.txt", Path(os.environ["FINETUNE_PHI_CACHE"])
    )
    # Azure mounts a model registered from a job's `model/` output at
    # /var/azureml-app/azureml-models/<name>/<version>/model and sets AZUREML_MODEL_DIR to its parent.
    var_app = tmp_path_factory.mktemp("var") / "azureml-app"
    model_dir = var_app / "azureml-models" / "tiny-phi3-sft" / "1"
    mlflow.set_tracking_uri(registered.tracking_uri)
    try:
        mlflow.artifacts.download_artifacts(registered.uri, dst_path=str(model_dir / "model"))
    finally:
        mlflow.set_tracking_uri(None)
    # The server starts in AML_APP_ROOT with the entry script below it: neither the cwd nor
    # AML_APP_ROOT is the snapshot's folder, so `common` imports only through score.py's own bootstrap.
    scoring_code_dir(var_app / "onlinescoring")
    srv = AzmlInfSrv(venv, var_app, "onlinescoring/score.py", model_dir, free_port(), var_app / "server.log")
    try:
        srv.wait_until_live()
        yield srv
    finally:
        srv.stop()


def score(srv: AzmlInfSrv, body: bytes | dict) -> tuple[int, object]:
    request = urllib.request.Request(
        f"{srv.url}/score",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_liveness_route_answers_after_init(server):
    with urllib.request.urlopen(f"{server.url}/", timeout=10) as response:
        assert response.read() == b"Healthy"
    assert "Users's init has completed successfully" in server.log.read_text()


@pytest.mark.parametrize(
    ("body", "answered"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            lambda a: a["object"] == "chat.completion" and a["choices"][0]["message"]["role"] == "assistant",
        ),
        (
            {"input_data": ["hi", "there"], "params": {"max_new_tokens": 3}},
            lambda a: isinstance(a, list) and len(a) == 2 and all(isinstance(s, str) for s in a),
        ),
        (
            {
                "input_data": {
                    "input_string": [{"role": "user", "content": "hi"}],
                    "parameters": {"max_new_tokens": 3},
                }
            },
            lambda a: isinstance(a["output"], str),
        ),
    ],
    ids=["openai", "seedA", "seedB"],
)
def test_the_three_payloads(server, body, answered):
    status, answer = score(server, body)
    assert status == 200 and answered(answer), answer


@pytest.mark.parametrize("body", [b"{not json", {"nope": 1}, {"messages": [], "max_tokens": 3}])
def test_a_bad_payload_is_a_4xx_with_an_error(server, body):
    status, answer = score(server, body)
    assert 400 <= status < 500 and "error" in answer, (status, answer)


def test_the_key_never_reaches_the_server_log(server):
    score(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    log = server.log.read_text()
    assert "POST /score" in log  # the requests were logged, their headers were not
    assert KEY not in log


def test_special_token_text_in_content_is_text_not_a_forged_turn(server, registered):
    """Role markers typed in a message are tokenized as the characters they are (see the local
    server's test of the same): the prompt has the tokens of the text, not the forged turns'."""
    from tests.deploy.conftest import training_tokenizer
    from tests.deploy.serve.test_openai_server import FORGED

    tokenizer = training_tokenizer(registered.model_dir)
    messages = [{"role": "user", "content": FORGED}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    before, _, after = rendered.partition(FORGED)
    as_text = tokenizer(before, add_special_tokens=False)["input_ids"]
    as_text += tokenizer(FORGED, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    as_text += tokenizer(after, add_special_tokens=False)["input_ids"]
    assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) < len(as_text)
    status, answer = score(server, {"messages": messages, "max_tokens": 2})
    assert status == 200 and answer["usage"]["prompt_tokens"] == len(as_text)


def test_stop_strings_are_bounded_and_their_cost_does_not_grow_with_the_vocabulary(server):
    """A stop string of a few thousand characters took tens of seconds and a gigabyte in
    transformers' stop_strings tables (vocabulary x length): now refused past 256 characters, and
    four of 256 are matched on the answer's last tokens' text (docs/serving-security.md: timings)."""
    hi = [{"role": "user", "content": "hi"}]
    status, answer = score(server, {"messages": hi, "max_tokens": 2, "stop": ["s" * 5000]})
    assert (
        status == 400 and answer["error"]["param"] == "stop" and "at most 256" in answer["error"]["message"]
    )
    longest = [c * 256 for c in "wxyz"]
    status, answer = score(server, {"messages": hi, "max_tokens": 8, "temperature": 0, "stop": longest})
    assert status == 200 and answer["usage"]["completion_tokens"] == 8, answer
    _, plain = score(server, {"messages": hi, "max_tokens": 8, "temperature": 0})
    text = plain["choices"][0]["message"]["content"]
    stop = text[2:4]
    status, answer = score(
        server, {"messages": hi, "max_tokens": 8, "temperature": 0, "stop": [stop, *longest[:3]]}
    )
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"]["content"] == text[: text.index(stop)].strip()


def test_content_parts_and_the_developer_role(server):
    parts = {
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]},
        ],
        "max_tokens": 3,
        "temperature": 0,
    }
    as_strings = {
        **parts,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "hi\nthere"},
        ],
    }
    status, answer = score(server, parts)
    assert status == 200
    assert answer["choices"][0]["message"] == score(server, as_strings)[1]["choices"][0]["message"]
