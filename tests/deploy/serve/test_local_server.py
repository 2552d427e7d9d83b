"""The local server's /score end to end on the tiny registered model: three payload shapes,
answers identical to training's own greedy generation, 4xx messages in OpenAI's error object,
key auth, 50 concurrent requests (batched: each answered as alone), stop strings."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy.serve.background import serve_in_background
from tests.deploy.conftest import training_tokenizer

KEY = "test-key-not-a-secret"
SYSTEM_USER = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Repeat: red fox"},
]


def call(url: str, body, key: str | None = KEY, method: str = "POST"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data if method == "POST" else None, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(registered):
    env = {"MLFLOW_TRACKING_URI": registered.tracking_uri, "FINETUNE_PHI_ENDPOINT_KEY": KEY}
    with serve_in_background(registered.uri, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def trained_answer(registered):
    """Greedy answers exactly as training's evaluation produces them (train.evaluate)."""
    from transformers import AutoModelForCausalLM

    from train.evaluate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(registered.model_dir)
    tokenizer = training_tokenizer(registered.model_dir)
    return lambda messages, n: generate_answers(model, tokenizer, [messages], max_new_tokens=n)[0]["text"]


def test_health_routes_answer_without_a_key(server):
    for route in ("/", "/health"):
        assert call(server + route, None, key=None, method="GET") == (200, {"status": "ok"})


def test_three_payload_shapes_answer_as_training_generates(server, trained_answer):
    status, seed_a = call(
        f"{server}/score", {"input_data": ["Repeat: red fox", "hi"], "params": {"max_new_tokens": 6}}
    )
    assert status == 200
    assert seed_a == [trained_answer([{"role": "user", "content": t}], 6) for t in ("Repeat: red fox", "hi")]

    body = {
        "input_data": {"input_string": SYSTEM_USER, "parameters": {"max_new_tokens": 6, "temperature": 0}}
    }
    assert call(f"{server}/score", body) == (200, {"output": trained_answer(SYSTEM_USER, 6)})

    status, completion = call(f"{server}/score", {"messages": SYSTEM_USER, "max_tokens": 6})
    assert status == 200 and completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": trained_answer(SYSTEM_USER, 6)}
    assert choice["finish_reason"] in ("stop", "length")
    assert completion["usage"]["completion_tokens"] <= 6


def test_bad_requests_get_4xx_saying_what_was_expected(server):
    status, body = call(f"{server}/score", {"prompt": "hi"})
    assert status == 400 and "expected one of" in body["error"]["message"]
    status, body = call(f"{server}/score", {"input_data": ["hi"], "params": {"max_length": 5}})
    assert status == 400 and "accepted: max_new_tokens" in body["error"]["message"]
    assert (body["error"]["param"], body["error"]["code"]) == ("max_length", "unknown_parameter")
    status, body = call(f"{server}/score", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]


def test_key_is_required_when_configured(server):
    for key in (None, "wrong"):
        status, body = call(f"{server}/score", {"messages": SYSTEM_USER}, key=key)
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
        assert body["error"]["code"] == "invalid_api_key" and KEY not in json.dumps(body)


def test_fifty_concurrent_requests_all_answered(server, trained_answer):
    payload = {"messages": SYSTEM_USER, "max_tokens": 3}
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: call(f"{server}/score", payload), range(50)))
    assert [status for status, _ in results] == [200] * 50
    answers = {body["choices"][0]["message"]["content"] for _, body in results}
    assert answers == {trained_answer(SYSTEM_USER, 3)}  # batched, each answered as alone


def test_stop_strings_end_the_answer_before_them(server, trained_answer):
    full = trained_answer(SYSTEM_USER, 8)
    stop = full.split()[-1]  # the last word of the unconstrained answer
    status, completion = call(f"{server}/score", {"messages": SYSTEM_USER, "max_tokens": 8, "stop": [stop]})
    assert status == 200
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full[: full.index(stop)].strip()
