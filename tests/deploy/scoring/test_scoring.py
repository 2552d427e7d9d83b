"""The payload contract (common.payloads) and Azure's scoring script (score.py) on hostile input:
shapes, parameter mapping, limits and OpenAI's error object; `run()` fed flask requests as
azureml-inference-server-http feeds them (`@rawhttp`), against the tiny registered model."""

from __future__ import annotations

import io
import json

import mlflow
import pytest
from flask import Request
from werkzeug.test import EnvironBuilder

from common.payloads import (
    BadRequest,
    RequestLimits,
    generation_kwargs,
    parse_chat_completion,
    parse_json,
    parse_request,
)
from deploy.scoring import score

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
USER = [{"role": "user", "content": "hi"}]


def test_the_three_shapes_are_recognised():
    a = parse_request(
        {"input_data": ["one", "two"], "params": {"max_new_tokens": 4, "return_full_text": True}}
    )
    assert a.shape == "seedA" and a.return_full_text
    assert a.conversations == [[{"role": "user", "content": "one"}], [{"role": "user", "content": "two"}]]
    b = parse_request({"input_data": {"input_string": MESSAGES, "parameters": {"max_new_tokens": 4}}})
    assert (b.shape, b.conversations, b.generate["max_new_tokens"]) == ("seedB", [MESSAGES], 4)
    c = parse_request({"messages": MESSAGES, "max_tokens": 6, "model": "any"})
    assert (c.shape, c.generate["max_new_tokens"]) == ("openai", 6)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"max_new_tokens": 128, "do_sample": False}),
        ({"max_tokens": 3, "temperature": 0}, {"max_new_tokens": 3, "do_sample": False}),
        ({"temperature": 0.7}, {"max_new_tokens": 128, "do_sample": True, "temperature": 0.7, "top_p": 1.0}),
        ({"temperature": 0.7, "do_sample": False, "top_p": 0.5}, {"max_new_tokens": 128, "do_sample": False}),
        (
            {"max_new_tokens": 5, "max_tokens": 5, "top_p": 0.9, "temperature": 1},
            {"max_new_tokens": 5, "do_sample": True, "temperature": 1.0, "top_p": 0.9},
        ),
    ],
)
def test_generation_parameters_map_to_generate_arguments(params, expected):
    assert generation_kwargs(params)[0] == expected


def test_the_openai_route_takes_openais_defaults_and_names():
    default = parse_chat_completion({"model": "m", "messages": USER})
    assert default.generate == {"max_new_tokens": 128, "do_sample": True, "temperature": 1.0, "top_p": 1.0}
    greedy = parse_chat_completion(
        {"messages": USER, "temperature": 0, "max_completion_tokens": 9, "stop": "x", "user": "u1", "n": 1}
    )
    assert (greedy.generate, greedy.stop, greedy.stream) == (
        {"max_new_tokens": 9, "do_sample": False},
        ["x"],
        False,
    )
    streamed = parse_chat_completion(
        {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert (streamed.stream, streamed.include_usage) == (True, True)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "JSON object"),
        ({"prompt": "hi"}, "no 'messages' or 'input_data'"),
        ({"input_data": []}, "non-empty list of non-empty strings"),
        (
            {"input_data": ["hi"], "params": {"max_length": 9}},
            r"unknown parameter\(s\) \['max_length'\]; accepted: max_new_tokens",
        ),
        ({"input_data": {"parameters": {}}}, "input_string is missing"),
        (
            {"input_data": {"input_string": [{"role": "bot", "content": "x"}]}},
            r"input_string\[0\].role must be",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "end with a user",
        ),
        ({"messages": MESSAGES, "max_tokens": 0}, r"max_tokens must be an integer in \[1, 4096\]"),
        ({"messages": MESSAGES, "max_tokens": 3, "max_new_tokens": 4}, "disagree"),
        ({"messages": MESSAGES, "do_sample": True}, "needs a temperature > 0"),
        ({"messages": MESSAGES, "top_p": 0}, r"top_p must be a number in \(0, 1\]"),
        (
            {"messages": MESSAGES, "temperature": 3},
            r"temperature must be 0 \(greedy\) or a number in \[0.01, 2\]",
        ),
        ({"messages": MESSAGES, "temperature": 1e-300}, r"temperature must be 0 \(greedy\)"),
        ({"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"messages": MESSAGES, "stream": True}, "stream=false"),
        ({"messages": MESSAGES, "input_data": ["x"]}, "not both"),
    ],
)
def test_bad_payloads_say_what_was_expected(payload, message):
    with pytest.raises(BadRequest, match=message) as refused:
        parse_request(payload)
    assert refused.value.status == 400
    assert set(refused.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"messages": [], "temperature": NaN}', "NaN is not a JSON number"),
        (b'{"messages": [], "temperature": Infinity}', "Infinity is not a JSON number"),
        (b'{"messages": [], "temperature": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"messages": [], "temperature": 1e999}', "1e999 is out of range"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"messages": "\xff\xfe"}', "not valid JSON"),
        (b'{"messages": [', "not valid JSON"),
    ],
)
def test_json_that_python_accepts_but_no_client_sends_is_refused(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_json(body)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
        ({"input_data": ["fine", "\udfff"]}, "input_data[1]"),
        ({"messages": USER, "stop": ["\ud800"]}, "stop"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(payload, param):
    raw = json.dumps(payload).encode()  # "\\ud800" escapes, as a hostile client sends them
    with pytest.raises(BadRequest, match="lone surrogate") as refused:
        parse_request(parse_json(raw))
    assert refused.value.param == param


def test_sizes_are_bounded_before_anything_is_tokenized():
    limits = RequestLimits(max_messages=256, max_prompts=16, max_prompt_chars=1000)
    many_messages = [{"role": "user", "content": "word"}] * 60_000
    with pytest.raises(BadRequest, match="60000 messages; at most 256"):
        parse_request({"messages": many_messages}, limits)
    with pytest.raises(BadRequest, match="2000 prompts; at most 16"):
        parse_request({"input_data": ["hi"] * 2000}, limits)
    with pytest.raises(BadRequest, match="1000000 characters.*at most 1000") as refused:
        parse_chat_completion({"messages": [{"role": "user", "content": "x" * 1_000_000}]}, limits)
    assert refused.value.code == "context_length_exceeded"
    assert parse_request({"input_data": ["x" * 1000] * 16}, limits).shape == "seedA"  # at the limits: fine


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_value"),
        ({"tools": []}, "tools", "unsupported_parameter"),
        ({"seed": 1}, "seed", "unsupported_parameter"),
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", None),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens", None),
    ],
)
def test_the_openai_route_refuses_what_it_cannot_honour(payload, param, code):
    with pytest.raises(BadRequest) as refused:
        parse_chat_completion({"messages": USER, **payload})
    assert (refused.value.param, refused.value.code) == (param, code)


# ---------------------------------------------------------------- score.py under Azure's contract


@pytest.fixture(scope="module")
def scorer(registered):
    mlflow.set_tracking_uri(registered.tracking_uri)
    try:
        score.init(registered.uri)
    finally:
        mlflow.set_tracking_uri(None)
    yield score._scorer
    score._scorer = None


def request(body: bytes | None = None, **environ) -> Request:
    """A flask request as azureml-inference-server-http hands it to a @rawhttp run()."""
    built = EnvironBuilder(method="POST", data=body, content_type="application/json").get_environ()
    if "wsgi.input_terminated" in environ:  # a chunked body: no Content-Length, the server ends the stream
        built.pop("CONTENT_LENGTH", None)
    return Request({**built, **environ})


def test_azure_run_answers_in_the_shape_asked(scorer):
    answer = scorer.chat_model.answer
    generate = {"max_new_tokens": 4, "do_sample": False}
    body = json.dumps({"input_data": ["a", "b"], "params": {"max_new_tokens": 4}}).encode()
    assert score.run(request(body)) == [
        answer([{"role": "user", "content": t}], generate, [])["text"] for t in "ab"
    ]
    body = json.dumps(
        {"input_data": {"input_string": MESSAGES, "parameters": {"max_new_tokens": 4}}}
    ).encode()
    assert score.run(request(body)) == {"output": answer(MESSAGES, generate, [])["text"]}
    completion = score.run(request(json.dumps({"messages": MESSAGES, "max_tokens": 4}).encode()))
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == answer(MESSAGES, generate, [])["text"]


class Unread(io.RawIOBase):
    """A request body that must not be read."""

    def readinto(self, buffer):
        raise AssertionError("the body was read")


def test_azure_run_refuses_hostile_input_with_openais_error_object(scorer):
    limit = scorer.limits.max_body_bytes
    # Without azureml-inference-server-http (not in this stack) run() returns the error body itself.
    declared = score.run(request(**{"CONTENT_LENGTH": str(20_000_000), "wsgi.input": Unread()}))
    assert declared["error"]["code"] == "request_too_large" and str(limit) in declared["error"]["message"]
    chunked = {"wsgi.input": io.BytesIO(b"x" * (limit + 1)), "wsgi.input_terminated": True}
    assert score.run(request(**chunked))["error"]["code"] == "request_too_large"

    nested = score.run(request(b"[" * 100_000 + b"]" * 100_000))
    assert "nested too deeply" in nested["error"]["message"]
    assert score.run(request(b"{oops"))["error"]["message"].startswith("the body is not valid JSON")
    surrogate = score.run(request(json.dumps({"input_data": ["\ud800"]}).encode()))
    assert surrogate["error"]["param"] == "input_data[0]"
    huge = score.run(request(json.dumps({"input_data": ["word " * 200_000]}).encode()))
    assert huge["error"]["code"] == "context_length_exceeded"

    context = scorer.chat_model.context_tokens
    too_long = score.run(request(json.dumps({"messages": USER, "max_tokens": context}).encode()))
    prompt_tokens = len(scorer.chat_model.prompt_ids(USER))
    assert f"maximum context length is {context} tokens" in too_long["error"]["message"]
    assert f"({prompt_tokens} in the messages, {context} in the completion)" in too_long["error"]["message"]
    for refused in (declared, nested, surrogate, huge, too_long):
        assert set(refused["error"]) == {"message", "type", "param", "code"}


def test_find_mlflow_model_looks_below_azureml_model_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}")
    assert score.find_mlflow_model(tmp_path) == str(tmp_path / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no MLflow model"):
        score.find_mlflow_model(tmp_path / "empty")
