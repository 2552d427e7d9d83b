"""action=evaluate: held-out answers through the serving code, an MLflow evaluation run linked to the version."""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from common.paths import PROJECT_ROOT
from deploy import __main__ as cli
from deploy.evaluate import answers, gate, judge
from deploy.evaluate.cases import EvaluationError, held_out_cases, read_cases
from tests.deploy.conftest import compose_deploy

HELD_OUT = PROJECT_ROOT / "train" / "assets" / "sample_test.jsonl"
TASKS = Path(__file__).parent / "lm_eval_tasks"
# A conversation the scoring contract refuses (no such role): a failed row, never a dropped one.
REFUSED = {"messages": [{"role": "tool", "content": "42"}, {"role": "assistant", "content": "forty-two"}]}


def write_set(path, rows: int):
    lines = HELD_OUT.read_text(encoding="utf-8").splitlines()[:rows] + [json.dumps(REFUSED)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_evaluate_logs_a_run_linked_to_the_version(registered, tmp_path):
    source = write_set(tmp_path / "set.jsonl", rows=6)
    cfg = compose_deploy(
        "action=evaluate",
        "model.version=1",
        f"tracking_uri={registered.tracking_uri}",
        f"eval.source={source}",
        "eval.max_new_tokens=8",
        "eval.batch_size=4",
        f"eval.tasks=[{TASKS / 'arc_words.yaml'},{TASKS / 'hellaswag_words.yaml'}]",
    )
    evaluation = cli.run(cfg)

    assert len(evaluation.rows) == 7
    refused = evaluation.rows[-1]
    assert refused["error"].startswith("400 ") and "role" in refused["error"]
    assert (refused["answer"], refused["finish_reason"], refused["exact_match"]) == ("", "error", 0.0)
    assert evaluation.metrics["error_rate"] == pytest.approx(1 / 7)

    client = MlflowClient(registered.tracking_uri)
    run = client.get_run(evaluation.run_id)
    assert run.info.experiment_id == client.get_run(registered.run_id).info.experiment_id
    assert run.data.tags["eval.model_version"] == "1" and run.data.tags["eval.source"] == str(source)
    assert run.data.tags["eval.training_run_id"] == registered.run_id
    assert run.data.metrics["exact_match"] == pytest.approx(evaluation.metrics["exact_match"])
    table = client.load_table(run.info.experiment_id, "eval/answers.json", run_ids=[run.info.run_id])
    assert len(table) == 7 and table["exact_match"].mean() == pytest.approx(run.data.metrics["exact_match"])
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["held-out"]
    assert {"arc_words_acc", "arc_words_acc_norm", "hellaswag_words_acc"} <= set(run.data.metrics)
    tasks = client.load_table(run.info.experiment_id, "eval/tasks/arc_words.json", run_ids=[run.info.run_id])
    assert len(tasks) == 5 and tasks["acc"].mean() == pytest.approx(run.data.metrics["arc_words_acc"])

    version = client.get_model_version("tiny-phi3-sft", "1")
    assert version.tags["eval.run_id"] == run.info.run_id
    assert float(version.tags["eval.error_rate"]) == pytest.approx(1 / 7, rel=1e-5)


def test_batched_answers_are_what_the_endpoint_answers_one_by_one(registered):
    """A batch of the evaluation answers each conversation as the scoring script answers its request."""
    from deploy.scoring.score import ChatModel, Scorer

    mlflow.set_tracking_uri(registered.tracking_uri)
    chat_model = ChatModel(registered.uri)
    cases = read_cases(HELD_OUT, str(HELD_OUT), max_rows=6)
    rows = answers.answer_in_process(chat_model, cases, max_new_tokens=8, batch_size=6)
    scorer = Scorer(chat_model)
    for case, row in zip(cases, rows):
        status, body = scorer.handle(answers.openai_request(case, 8))
        assert status == 200
        answer = answers.completion_answer(body)
        assert (row["answer"], row["finish_reason"], row["answer_tokens"]) == (
            answer["text"],
            answer["finish_reason"],
            answer["usage"]["completion_tokens"],
        )


def test_a_bad_held_out_file_names_the_line(tmp_path):
    bad = tmp_path / "set.jsonl"
    bad.write_text(
        HELD_OUT.read_text(encoding="utf-8").splitlines()[0]
        + '\n{"messages": [{"role": "user", "content": "no answer"}]}\n',
        encoding="utf-8",
    )
    with pytest.raises(EvaluationError, match=r"set.jsonl:2: expected .*assistant"):
        read_cases(bad, str(bad))
    cfg = compose_deploy(f"eval.source={tmp_path / 'missing.jsonl'}")
    with pytest.raises(EvaluationError, match=r"eval.source=.*missing.jsonl: no such file"):
        held_out_cases(cfg.eval, None, None)
    with pytest.raises(EvaluationError, match="eval.source=FILE.jsonl"):
        held_out_cases(compose_deploy().eval, None, None)


def test_promote_takes_a_registered_version():
    with pytest.raises(gate.GateError, match="model.version=N"):
        cli.run(compose_deploy("action=promote", "model.alias=champion"))


def chat_completion(content: str) -> dict:
    """OpenAI's chat completion object (platform.openai.com/docs/api-reference/chat/object)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "judge",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 90, "completion_tokens": 12, "total_tokens": 102},
    }


def test_judge_verdicts_become_the_judge_metric(fake_endpoint, monkeypatch):
    """A judge model's verdicts through MLflow's make_judge. The project's tiny model cannot give
    verdicts, so a loopback server replays what an OpenAI-compatible judge answers."""
    monkeypatch.setenv("JUDGE_TEST_KEY", "k-judge")
    monkeypatch.setenv("MLFLOW_MODEL_CATALOG_URI", "")  # offline: no model catalog from GitHub
    fake_endpoint.answer(
        (200, chat_completion('{"result": true, "rationale": "Both say rabbit."}')),
        (200, chat_completion('{"result": false, "rationale": "Three is not two."}')),
    )
    judge_cfg = compose_deploy(
        f"eval.judge.url={fake_endpoint.url.removesuffix('/score')}/v1",
        "eval.judge.model=gpt-judge",
        "eval.judge.key_env=JUDGE_TEST_KEY",
    ).eval.judge
    rows = [
        {"prompt": "What is the first word of: rabbit olive", "answer": "rabbit", "reference": "rabbit"},
        {"prompt": "How many words are in: glacier lantern", "answer": "three", "reference": "two"},
    ]
    judged, metrics = judge.judge_rows(rows, judge_cfg)

    assert metrics == {"judge": 0.5, "judge_errors": 0.0}
    assert [(r["judge"], r["judge_rationale"]) for r in judged] == [
        (1.0, "Both say rabbit."),
        (0.0, "Three is not two."),
    ]
    first = fake_endpoint.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["headers"]["authorization"] == "Bearer k-judge"
    assert first["body"]["model"] == "gpt-judge" and first["body"]["temperature"] == 0
    prompt = json.dumps(first["body"]["messages"])
    assert "rabbit olive" in prompt and "Reference" in prompt  # the instructions, rendered with the row
    assert "OPENAI_API_KEY" not in os.environ  # restored after the judge's calls


@pytest.mark.slow
def test_a_judge_that_cannot_judge_is_not_measured_and_fails_the_gate(registered, tmp_path, monkeypatch):
    """The project's own server as the judge, through its OpenAI API and with its key. The tiny
    model's context (512 tokens) is shorter than MLflow's judge prompt, so the server refuses every
    judge request (OpenAI's context_length_exceeded): each row is a judge error, the metric is not
    measured, and a gated judge fails. The key never reaches MLflow."""
    from deploy.serve.background import serve_in_background

    key = "judge-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("JUDGE_TEST_KEY", key)
    monkeypatch.setenv("MLFLOW_MODEL_CATALOG_URI", "")  # offline: no model catalog from GitHub
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    log_path = tmp_path / "judge.log"
    env = {"MLFLOW_TRACKING_URI": registered.tracking_uri, "FINETUNE_PHI_ENDPOINT_KEY": key}
    with serve_in_background(registered.uri, env=env, log_path=log_path) as url:
        evaluation = cli.run(
            compose_deploy(
                "action=evaluate",
                "model.version=1",
                f"tracking_uri={registered.tracking_uri}",
                f"eval.source={write_set(tmp_path / 'set.jsonl', rows=3)}",
                "eval.max_new_tokens=4",
                f"eval.judge.url={url}/v1",
                "eval.judge.model=tiny-phi3-sft/1",  # the id the server serves
                "eval.judge.key_env=JUDGE_TEST_KEY",
            )
        )
    requests = [line for line in log_path.read_text().splitlines() if "POST /v1/chat/completions" in line]
    assert len(requests) >= 4 and not [line for line in requests if '" 401 ' in line]  # with the key

    assert math.isnan(evaluation.metrics["judge"]) and evaluation.metrics["judge_errors"] == 4
    assert all(row["judge"] is None and "context window" in row["judge_error"] for row in evaluation.rows)
    comparison = gate.compare(evaluation.metrics, None, compose_deploy().gate.tolerance)
    assert comparison.failed == ["judge"] and "FAIL (not measured" in comparison.table()

    # never the key: not in the run, the answers table or the store's file
    client = MlflowClient(registered.tracking_uri)
    run = client.get_run(evaluation.run_id)
    table = client.load_table(run.info.experiment_id, "eval/answers.json", run_ids=[run.info.run_id])
    assert "judge" not in run.data.metrics and run.data.metrics["judge_errors"] == 4
    assert key not in table.to_json() and key not in str(run.data.tags) and key not in str(run.data.params)
    assert key.encode() not in Path(registered.tracking_uri.removeprefix("sqlite:///")).read_bytes()


@pytest.mark.slow
def test_an_evaluation_logs_through_a_tracking_server_that_answers_as_azure_s(tmp_path_factory, tmp_path):
    """A real `mlflow server` behind the proxy that answers as Azure ML's tracking server does
    (tests/train/azure_like_tracking.py: no logged-models API, its limits): the run, the table and
    the version's tags all land, and nothing asks for what Azure lacks."""
    import io

    import pandas as pd

    from deploy.serve.background import free_port
    from tests.deploy.conftest import log_model
    from tests.train.azure_like_tracking import LOGGED_MODELS, AzureLikeProxy, MlflowServer
    from train.tiny_model import ensure_tiny_phi3

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    proxy = AzureLikeProxy(int(server.url.rsplit(":", 1)[1]))
    try:
        registered = log_model(tmp_path, ensure_tiny_phi3(), tracking_uri=proxy.url)
        client = MlflowClient(proxy.url)
        held_out = write_set(tmp_path / "test.jsonl", rows=3)  # as training logs it: data/test.jsonl
        client.log_artifact(registered.run_id, str(held_out), "data")
        first_request = len(proxy.seen)
        evaluation = cli.run(
            compose_deploy(
                "action=evaluate",
                "model.version=1",
                f"tracking_uri={proxy.url}",
                "parity.check=false",  # its runs:/ download searches logged models (404, tolerated)
                "eval.max_new_tokens=4",
                f"eval.tasks=[{TASKS / 'arc_words.yaml'}]",
            )
        )
        run = client.get_run(evaluation.run_id)
        # read back without MlflowClient.load_table, which itself asks for logged models
        table = pd.read_json(
            io.StringIO(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/eval/answers.json")),
            orient="split",
        )
        version = client.get_model_version("tiny-phi3-sft", "1")
    finally:
        mlflow.set_tracking_uri(None)  # find_model set it (a module global, and exported)
        proxy.close()
        server.stop()
    assert not [path for _, path in proxy.seen[first_request:] if LOGGED_MODELS in path]
    assert len(table) == 4 and run.data.metrics["error_rate"] == pytest.approx(1 / 4)
    assert "arc_words_acc" in run.data.metrics
    assert run.data.tags["eval.source"] == f"runs:/{registered.run_id}/data/test.jsonl"
    assert version.tags["eval.run_id"] == run.info.run_id
