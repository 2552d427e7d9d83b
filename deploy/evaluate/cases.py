"""The held-out conversations an evaluation answers, each cut before its last assistant turn.

The set: the held-out conversations the version's training run logged (`data/test.jsonl`), or
`eval.source=FILE` (JSON lines with `messages`, ultrachat's schema), the first `eval.max_rows`
of them (null: all). Each is cut before its last assistant turn, whose text is the reference.
A line that is not such a conversation is an EvaluationError naming the file and line.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from common.generation import split_for_generation

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
            record = json.loads(line)
            if isinstance(record, dict) and record.get("messages") == []:
                continue  # a KTO run's bad completion (train/prepare/preference.py): no reference to answer
            prompt, reference = split_for_generation(record["messages"])
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
