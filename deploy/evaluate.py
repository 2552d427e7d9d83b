"""Evaluation on held-out conversations, answered the way the endpoint answers them.

The set: the held-out conversations the version's training run logged (`data/test.jsonl`), or
`eval.source=FILE` (JSON lines with `messages`, ultrachat's schema), the first `eval.max_rows`
of them (null: all). Each is cut before its last assistant turn, whose text is the reference.

Answers: each conversation becomes the OpenAI request an endpoint client sends (greedy,
`eval.max_new_tokens`), checked by the scoring contract (`common.payloads`) and the context
rule, and answered by the serving code's generator (`deploy.scoring.score.ChatModel` over
`common.generation`: the same template rendering, stop ids and decoding as both servers) in
batches of `eval.batch_size`. A request the endpoint would refuse is a failed row, counted in
`error_rate` and as a wrong, empty answer, never dropped. The Azure gate sends the same
requests to deployments instead (deploy/azureml_gate.py).

Then the metrics (deploy/metrics.py), the optional judge (deploy/judge.py) and lm-eval tasks
(deploy/lm_eval_tasks.py), logged as an MLflow run in the training run's experiment: tags
naming the model version, the set as a dataset input, the metrics, and one row per conversation
as a table (`eval/answers.json`). The version gets `eval.<metric>` and `eval.run_id` tags.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from common import mlflow_tables
from common.generation import split_for_generation
from common.payloads import (
    BadRequest,
    GenerationParams,
    Shape,
    UnexpectedAnswer,
    build_payload,
    parse_request,
)
from deploy import judge, lm_eval_tasks
from deploy.metrics import score_row, summarize

HELD_OUT_ARTIFACT = "data/test.jsonl"  # logged by training (train/tracking.py log_prepared_data)


class EvaluationError(RuntimeError):
    """The evaluation cannot run as configured; the message says what to change."""


@dataclass(frozen=True)
class Case:
    """A held-out conversation up to its last assistant turn, and that turn's text."""

    messages: list[dict]
    reference: str


def read_cases(path: Path, where: str, max_rows: int | None = None) -> list[Case]:
    expected = '{"messages": [..., {"role": "assistant", "content": "the reference answer"}]}'
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompt, reference = split_for_generation(json.loads(line)["messages"])
        except (ValueError, KeyError, TypeError) as e:  # not JSON, no messages, no assistant turn
            raise EvaluationError(f"{where}:{number}: expected {expected} ({type(e).__name__}: {e})") from e
        if not prompt or not isinstance(reference, str):
            raise EvaluationError(
                f"{where}:{number}: no message before the last assistant turn, or no text in it"
            )
        cases.append(Case(prompt, reference))
        if max_rows and len(cases) == max_rows:
            break
    if not cases:
        raise EvaluationError(f"{where}: no conversations")
    return cases


def held_out_cases(eval_cfg, training_run_id: str | None, max_rows: int | None) -> tuple[list[Case], str]:
    """The conversations to evaluate on, and where they came from."""
    if eval_cfg.source:
        path = Path(eval_cfg.source)
        if not path.is_file():
            raise EvaluationError(f"eval.source={eval_cfg.source}: no such file")
        return read_cases(path, str(path), max_rows), str(path)
    if training_run_id is None:
        raise EvaluationError(
            "the model's training run is not known (a model.uri that is not runs:/ or a registered version): "
            "give the conversations to evaluate on with eval.source=FILE.jsonl"
        )
    where = f"runs:/{training_run_id}/{HELD_OUT_ARTIFACT}"
    try:
        # From the run's artifact location, not runs:/ (which also searches MLflow 3's logged
        # models: a 404 on Azure ML's tracking server).
        run_artifacts = MlflowClient().get_run(training_run_id).info.artifact_uri
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{run_artifacts.rstrip('/')}/{HELD_OUT_ARTIFACT}",
            dst_path=tempfile.mkdtemp(prefix="finetune-phi-eval-"),
        )
    except (MlflowException, OSError) as e:
        raise EvaluationError(
            f"cannot read {where} ({type(e).__name__}: {str(e)[:200]}); runs trained before the evaluation "
            "gate did not log it: give the conversations with eval.source=FILE.jsonl"
        ) from e
    return read_cases(Path(local), where, max_rows), where


# ---------------------------------------------------------------- answers


def openai_request(case: Case, max_new_tokens: int) -> dict:
    """The request an endpoint client sends for this conversation: greedy, OpenAI's shape."""
    return build_payload(Shape.openai, case.messages, GenerationParams(max_new_tokens=max_new_tokens))


def completion_answer(body) -> dict:
    """text, finish_reason and usage of a chat.completion body (as `Generator.answer_batch` gives them)."""
    try:
        choice = body["choices"][0]
        answer = {
            "text": choice["message"]["content"],
            "finish_reason": choice["finish_reason"],
            "usage": {"completion_tokens": int(body["usage"]["completion_tokens"])},
        }
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise UnexpectedAnswer(f"not a chat.completion with usage: {json.dumps(body)[:300]}") from e
    if not isinstance(answer["text"], str):
        raise UnexpectedAnswer(f"the answer's content is not text: {json.dumps(body)[:300]}")
    return answer


def answer_row(case: Case, answer: dict | None, latency_s: float | None, error: str | None = None) -> dict:
    """One table row; a failed request (`answer` None) is an empty answer that did not stop."""
    return {
        "conversation": json.dumps(case.messages, ensure_ascii=False),
        "prompt": case.messages[-1]["content"],
        "reference": case.reference,
        "answer": answer["text"] if answer else "",
        "finish_reason": answer["finish_reason"] if answer else "error",
        "answer_tokens": answer["usage"]["completion_tokens"] if answer else 0,
        "latency_s": latency_s,
        "error": error,
    }


def answer_in_process(chat_model, cases: list[Case], max_new_tokens: int, batch_size: int) -> list[dict]:
    """The serving code's answers, in batches; a request the endpoint refuses is a failed row."""
    limits = chat_model.request_limits()  # as the servers set them
    rows: list[dict | None] = [None] * len(cases)
    accepted = []
    for index, case in enumerate(cases):
        try:
            request = parse_request(openai_request(case, max_new_tokens), limits)
            ids = chat_model.checked_prompt_ids(request.conversations[0], request.generate["max_new_tokens"])
        except BadRequest as e:
            rows[index] = answer_row(case, None, None, f"{e.status} {e.code or 'invalid_request'}: {e}")
            continue
        accepted.append((index, request, ids))
    for start in range(0, len(accepted), batch_size):
        batch = accepted[start : start + batch_size]
        started = time.perf_counter()
        # Every request carries the same generation settings (openai_request), so one batch does.
        answers = chat_model.answer_prompts(
            [ids for _, _, ids in batch], batch[0][1].generate, batch[0][1].stop
        )
        latency = time.perf_counter() - started  # each answer waited for its whole batch
        for (index, _, _), answer in zip(batch, answers):
            rows[index] = answer_row(cases[index], answer, latency)
    return rows


# ---------------------------------------------------------------- scores


@dataclass
class Evaluation:
    label: str  # how tables name it: "v2", "green (new)"
    rows: list[dict]
    metrics: dict[str, float]
    task_rows: dict[str, list[dict]] = field(default_factory=dict)
    run_id: str | None = None  # the MLflow run it was logged as


def score(label: str, rows: list[dict], judge_cfg=None) -> Evaluation:
    """Metrics of answered rows, judged when `judge_cfg.url` is set."""
    rows = [score_row(r) for r in rows]
    metrics = summarize(rows)
    if judge_cfg is not None and judge_cfg.url:
        rows, judged = judge.judge_rows(rows, judge_cfg)
        metrics |= judged
    return Evaluation(label, rows, metrics)


def evaluate_in_process(chat_model, cases: list[Case], eval_cfg, label: str) -> Evaluation:
    """Answers, metrics, judge and lm-eval tasks of a loaded model (`deploy.scoring.score.ChatModel`)."""
    tasks = [lm_eval_tasks.load_task(path) for path in eval_cfg.tasks]  # a bad task file fails first
    rows = answer_in_process(chat_model, cases, eval_cfg.max_new_tokens, eval_cfg.batch_size)
    evaluation = score(label, rows, eval_cfg.judge)
    for task in tasks:
        metrics, evaluation.task_rows[task.name] = lm_eval_tasks.evaluate_task(
            chat_model.model, chat_model.tokenizer, task
        )
        evaluation.metrics |= metrics
    return evaluation


# ---------------------------------------------------------------- MLflow


def experiment_of(run_id: str | None) -> str | None:
    """The experiment of the training run, where its evaluations are logged (None: not reachable)."""
    if run_id is None:
        return None
    try:
        return MlflowClient().get_run(run_id).info.experiment_id
    except MlflowException:
        return None


def log_evaluation(evaluation: Evaluation, experiment_id: str, tags: dict[str, str], version=None) -> str:
    """The evaluation as an MLflow run (tags, the set as a dataset input, metrics, answers table);
    `version` (a registry ModelVersion) is tagged `eval.<metric>` and `eval.run_id`. Only run and
    registry calls every tracking server has (common.mlflow_tables). Returns the run id."""
    import pandas as pd

    table = pd.DataFrame(evaluation.rows)
    dataset = mlflow.data.from_pandas(
        table[["conversation", "reference"]], name="held-out", targets="reference"
    )
    measured = {k: v for k, v in evaluation.metrics.items() if math.isfinite(v)}
    tags = {**tags, "eval.dataset_digest": dataset.digest, "eval.rows": str(len(table))}
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"evaluate {evaluation.label}", tags=tags
    ) as run:
        mlflow.log_input(dataset, context="evaluation")
        mlflow.log_metrics(measured)
        mlflow_tables.log_table(table, "eval/answers.json")
        for name, rows in evaluation.task_rows.items():
            mlflow_tables.log_table(rows, f"eval/tasks/{name}.json")
    evaluation.run_id = run.info.run_id
    if version is not None:
        client = MlflowClient()
        for key, value in evaluation.metrics.items():  # an unmeasured one reads "nan"
            client.set_model_version_tag(version.name, version.version, f"eval.{key}", f"{value:.6g}")
        client.set_model_version_tag(version.name, version.version, "eval.run_id", run.info.run_id)
    return run.info.run_id


# ---------------------------------------------------------------- printing


def _cell(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def metrics_table(evaluation: Evaluation) -> str:
    lines = [f"{'metric':<22} {evaluation.label:>12}"]
    lines += [
        f"{name:<22} {'not measured' if math.isnan(value) else f'{value:.3f}':>12}"
        for name, value in evaluation.metrics.items()
    ]
    return "\n".join(lines)


def answers_table(rows: list[dict], limit: int = 10) -> str:
    """The first `limit` rows: prompt, reference, answer and how it ended."""
    lines = [f"{'prompt':<40} {'reference':<16} {'answer':<24} ended"]
    for row in rows[:limit]:
        ended = row["error"] or row["finish_reason"]
        lines.append(
            f"{_cell(row['prompt'], 40):<40} {_cell(row['reference'], 16):<16} {_cell(row['answer'], 24):<24} {_cell(ended, 60)}"
        )
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows")
    return "\n".join(lines)


def worse_rows(candidate: list[dict], baseline: list[dict], limit: int = 5) -> str:
    """Up to `limit` conversations where the candidate's answer scores below the baseline's (token F1)."""
    pairs = [(c, b) for c, b in zip(candidate, baseline) if c["token_f1"] < b["token_f1"]]
    lines = [f"{'prompt':<36} {'reference':<14} {'candidate':<20} baseline"]
    for c, b in pairs[:limit]:
        lines.append(
            f"{_cell(c['prompt'], 36):<36} {_cell(c['reference'], 14):<14} {_cell(c['answer'] or '(empty)', 20):<20} {_cell(b['answer'], 30)}"
        )
    lines.append(f"({len(pairs)} of {len(candidate)} answers score lower)")
    return "\n".join(lines)
