"""The endpoint client (common/endpoint_client.py) without promptflow: payload shapes, answers and every error path,
against a scriptable loopback server."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import urllib3

from common.endpoint_client import (
    EndpointAuthError,
    EndpointBusy,
    EndpointHTTPError,
    EndpointSettings,
    EndpointTimeout,
    EndpointUnreachable,
    GenerationParams,
    MalformedAnswer,
    ask,
    history_to_messages,
)
from common.payloads import error_body

KEY = "k3y-that-must-never-leak"
HELLO = [{"role": "user", "content": "hello"}]
PARAMS = GenerationParams(max_new_tokens=7, temperature=0.5, top_p=0.9, do_sample=True)


def settings(url: str, **kwargs) -> EndpointSettings:
    return EndpointSettings(url, **{"key": KEY, "retry_backoff_s": 0.01, **kwargs})


@pytest.mark.parametrize(
    ("payload", "answer", "expected_body"),
    [
        (
            "openai",
            {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            },
            {"messages": HELLO, "max_tokens": 7, "temperature": 0.5, "top_p": 0.9},
        ),
        (
            "seedB",
            {"output": "hi"},
            {
                "input_data": {
                    "input_string": HELLO,
                    "parameters": {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "do_sample": True},
                }
            },
        ),
        (
            "seedA",
            ["hi"],
            {
                "input_data": ["hello"],
                "params": {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "do_sample": True},
            },
        ),
    ],
)
def test_each_payload_shape_is_sent_and_its_answer_read(fake_endpoint, payload, answer, expected_body):
    fake_endpoint.answer((200, answer))
    got = ask(settings(fake_endpoint.url, payload=payload, deployment="blue"), HELLO, PARAMS)
    assert got == "hi"
    (request,) = fake_endpoint.requests
    assert request["body"] == expected_body
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["headers"]["azureml-model-deployment"] == "blue"


def test_no_key_sends_no_authorization(fake_endpoint):
    fake_endpoint.answer((200, {"output": "x"}))
    ask(EndpointSettings(fake_endpoint.url, payload="seedB"), HELLO)
    assert "authorization" not in fake_endpoint.requests[0]["headers"]


def test_a_positive_temperature_samples_as_in_openai(fake_endpoint):
    fake_endpoint.answer((200, {"output": "x"}), (200, {"output": "y"}))
    for temperature in (0.0, 0.7):
        ask(
            EndpointSettings(fake_endpoint.url, payload="seedB"),
            HELLO,
            GenerationParams(temperature=temperature),
        )
    sent = [r["body"]["input_data"]["parameters"]["do_sample"] for r in fake_endpoint.requests]
    assert sent == [False, True]


def test_connection_with_auth_none_sends_no_key():
    s = EndpointSettings.from_connection(
        {"endpoint": "http://127.0.0.1:1/score", "auth": "none", "timeout_s": "5"}, {"key": "none"}
    )
    assert (s.key, s.timeout_s, s.payload) == ("", 5.0, "openai")
    assert KEY not in repr(EndpointSettings("http://x/score", key=KEY))


def test_history_becomes_messages_in_order():
    history = [
        {"inputs": {"question": "q1"}, "outputs": {"answer": "a1"}},
        {"inputs": {"question": "q2"}, "outputs": {"answer": "a2"}},
    ]
    messages = history_to_messages(history, "q3", system="be brief")
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "be brief"),
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
        ("user", "q3"),
    ]
    with pytest.raises(ValueError, match=r"chat_history\[0\]"):
        history_to_messages([{"question": "no inputs key"}], "q")


def test_seed_a_refuses_history_instead_of_dropping_it(fake_endpoint):
    two_turns = history_to_messages([{"inputs": {"question": "a"}, "outputs": {"answer": "b"}}], "c")
    with pytest.raises(ValueError, match="payload=openai or payload=seedB"):
        ask(settings(fake_endpoint.url, payload="seedA"), two_turns)
    assert fake_endpoint.requests == []


def test_bad_generation_params_and_settings_fail_before_sending():
    with pytest.raises(ValueError, match="do_sample=true needs a temperature > 0"):
        GenerationParams(do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="payload 'seedC'"):
        EndpointSettings("http://127.0.0.1/score", payload="seedC")
    with pytest.raises(ValueError, match="no `endpoint` config.*flow.connect"):
        EndpointSettings.from_connection({}, {"key": KEY})


def test_endpoint_down_says_how_to_start_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(EndpointUnreachable, match="python -m deploy target=local"):
        ask(settings(f"http://127.0.0.1:{closed_port}/score"), HELLO)


def test_401_names_the_key_and_never_shows_it(fake_endpoint):
    fake_endpoint.answer((401, error_body(f"wrong key {KEY}", code="invalid_api_key")))
    with pytest.raises(EndpointAuthError, match="key is missing or wrong") as error:
        ask(settings(fake_endpoint.url), HELLO)
    assert KEY not in str(error.value)
    assert len(fake_endpoint.requests) == 1  # auth errors are not retried


def test_timeout_is_bounded(fake_endpoint):
    fake_endpoint.answer((200, {"output": "late"}, {}, 0.8))
    with pytest.raises(EndpointTimeout, match="within 0.2 s"):
        ask(settings(fake_endpoint.url, payload="seedB", timeout_s=0.2), HELLO)


def test_429_and_503_are_retried_a_bounded_number_of_times(fake_endpoint, monkeypatch):
    waits = []
    # urllib3's Retry sleeps through its module's `time`: record the waits instead of waiting.
    monkeypatch.setattr(urllib3.util.retry, "time", SimpleNamespace(sleep=waits.append))
    fake_endpoint.answer(
        (429, error_body("slow down"), {"Retry-After": "3"}), (503, b"busy"), (200, {"output": "ok"})
    )
    assert ask(settings(fake_endpoint.url, payload="seedB"), HELLO) == "ok"
    assert waits == [3.0, 0.02]  # the server's Retry-After, then urllib3's doubled backoff

    fake_endpoint.requests.clear()
    fake_endpoint.answer(*[(503, error_body("scaling"), {"Retry-After": "600"})] * 5)
    waits.clear()
    with pytest.raises(EndpointBusy, match=r"busy \(503\) after 2 retries"):
        ask(settings(fake_endpoint.url, max_retries=2), HELLO)
    assert len(fake_endpoint.requests) == 3
    assert waits == [10.0, 10.0]  # a long Retry-After is capped


def test_malformed_answers_say_what_was_expected(fake_endpoint):
    fake_endpoint.answer((200, b"<html>gateway</html>"))
    with pytest.raises(MalformedAnswer, match="not JSON.*gateway"):
        ask(settings(fake_endpoint.url), HELLO)
    fake_endpoint.answer((200, {"output": "a seedB answer"}))
    with pytest.raises(MalformedAnswer, match=r"not the openai shape.*payload"):
        ask(settings(fake_endpoint.url, payload="openai"), HELLO)
    fake_endpoint.answer((200, [{"generated_text": "x"}]))
    with pytest.raises(MalformedAnswer, match="seedA shape"):
        ask(settings(fake_endpoint.url, payload="seedA"), HELLO)


def test_other_http_errors_carry_the_server_message(fake_endpoint):
    # This project's servers answer OpenAI's error object: its message is what the user reads.
    fake_endpoint.answer((400, error_body("messages must end with a user message", param="messages")))
    with pytest.raises(EndpointHTTPError, match=r"HTTP 400: messages must end with a user message$"):
        ask(settings(fake_endpoint.url), HELLO)
    # A gateway in front of a deployment may answer in plain text: quoted as it is.
    fake_endpoint.answer((502, b"Bad Gateway"))
    with pytest.raises(EndpointHTTPError, match=r"HTTP 502: Bad Gateway$"):
        ask(settings(fake_endpoint.url), HELLO)
