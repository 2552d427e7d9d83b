"""Evaluations as MLflow runs in the training run's experiment, and the version's tags.

Each run carries tags naming the model version, the set as a dataset input, the metrics, and
one row per conversation as a table (`eval/answers.json`; lm-eval tasks under `eval/tasks/`).
The version gets `eval.<metric>` and `eval.run_id` tags. Only run and registry calls every
tracking server has (common.mlflow_tables), so Azure ML's server takes them too.
"""

from __future__ import annotations

import math

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from common import mlflow_tables
from deploy.evaluate.evaluation import Evaluation
from deploy.registry.find import ModelRef


def evaluation_tags(ref: ModelRef, run_id: str | None, source: str, max_new_tokens: int) -> dict[str, str]:
    """What an evaluation run is of: the model, its training run, the conversations and settings."""
    return {
        "eval.model_name": ref.name,
        "eval.model_version": str(ref.version or ""),
        "eval.model_uri": ref.uri,
        "eval.training_run_id": run_id or "",
        "eval.source": source,
        "eval.max_new_tokens": str(max_new_tokens),
    }


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
