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
