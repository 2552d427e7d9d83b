"""An evaluation of a loaded model: its answers, their metrics, the judge and lm-eval tasks.

The answers (deploy/evaluate/answers.py), the metrics (metrics.py), the optional judge
(judge.py) and lm-eval tasks (lm_eval_tasks.py, scored from the model's log-likelihoods) make one
`Evaluation`; the Azure traffic gate scores deployments' answers with the same `score`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deploy.evaluate import judge, lm_eval_tasks
from deploy.evaluate.answers import answer_in_process
from deploy.evaluate.cases import Case
from deploy.evaluate.metrics import score_row, summarize


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
