"""Evaluations printed: the metrics, the first answers, and where a candidate answers worse."""

from __future__ import annotations

import math

from deploy.evaluate.evaluation import Evaluation


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
