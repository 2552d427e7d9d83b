"""The scoring script's payload contract, without a model: shapes, parameter mapping, 4xx messages."""

from __future__ import annotations

import json

import pytest

from common.payloads import BadRequest, generation_kwargs, parse_request
from deploy.scoring import score

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


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
        ({"messages": MESSAGES, "max_tokens": 0}, r"max_new_tokens must be an integer in \[1, 4096\]"),
        ({"messages": MESSAGES, "max_tokens": 3, "max_new_tokens": 4}, "disagree"),
        ({"messages": MESSAGES, "do_sample": True}, "needs a temperature > 0"),
        ({"messages": MESSAGES, "top_p": 0}, r"top_p must be a number in \(0, 1\]"),
        ({"messages": MESSAGES, "stream": True}, "stream=false"),
        ({"messages": MESSAGES, "input_data": ["x"]}, "not both"),
    ],
)
def test_bad_payloads_say_what_was_expected(payload, message):
    with pytest.raises(BadRequest, match=message):
        parse_request(payload)


class EchoModel:
    """Stands in for ChatModel: answers with the last user message."""

    name = "echo"

    def answer(self, messages, generate, stop):
        return {"text": messages[-1]["content"].upper(), "finish_reason": "stop", "usage": {}}


def test_azure_run_answers_in_the_shape_asked_and_4xx_as_json(monkeypatch):
    monkeypatch.setattr(score, "_scorer", score.Scorer(EchoModel()))
    assert score.run(json.dumps({"input_data": ["a", "b"]})) == ["A", "B"]
    assert score.run(json.dumps({"input_data": ["a"], "params": {"return_full_text": True}})) == ["a\nA"]
    assert score.run(json.dumps({"input_data": {"input_string": MESSAGES}})) == {"output": "HI"}
    completion = score.run(json.dumps({"messages": MESSAGES}))
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "HI"},
        "finish_reason": "stop",
    }
    # Without azureml-inference-server-http (not in this stack) the error body is returned as is.
    assert "not valid JSON" in score.run("{oops")["error"]


def test_find_mlflow_model_looks_below_azureml_model_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}")
    assert score.find_mlflow_model(tmp_path) == str(tmp_path / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no MLflow model"):
        score.find_mlflow_model(tmp_path / "empty")
