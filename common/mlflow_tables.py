"""MLflow tables the way every tracking server takes them: a local store, an MLflow server (2.x
included) and Azure ML's. Used by training's held-out answers and deploy's evaluations."""

from __future__ import annotations

import json

import mlflow


def log_table(data, artifact_file: str) -> None:
    """`mlflow.log_table` for a table the run logs once (`data`: what `pandas.DataFrame` takes),
    without its read-back: MLflow's lists the run's artifacts first (to append to an existing
    table), and in MLflow 3 that listing searches logged models, which Azure ML's tracking server
    and MLflow 2.x servers answer with 404 (azure-sdk-for-python#44896). The same file (pandas'
    split orient) and the same run tag, so `MlflowClient.load_table` and the MLflow UI read it as
    MLflow's own."""
    import pandas as pd
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    mlflow.log_text(pd.DataFrame(data).to_json(orient="split", index=False, date_format="iso"), artifact_file)
    tags = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
    tables = json.loads(tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in tables:
        mlflow.set_tag(MLFLOW_LOGGED_ARTIFACTS, json.dumps([*tables, entry]))
