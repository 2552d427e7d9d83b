"""The gate: is a candidate's evaluation within tolerance of the baseline's, metric by metric?

`gate.tolerance` (conf/deploy/deploy.yaml) maps a metric to an absolute tolerance; a metric it
does not name, or names with null, is reported beside the others but not gated. A metric where
higher is better passes when candidate >= baseline - tolerance, one where lower is better when
candidate <= baseline + tolerance. A gated metric that one side could not measure (a judge that
answered nothing usable) fails: a gate that cannot see must not pass.

Used by `python -m deploy action=promote` (a registered version against the `champion` alias)
and by the Azure blue/green deploy (the new deployment against the live one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# reward_accuracy / reward_margin: a DPO/KTO version's held-out rewards against its starting model,
# from its training run (the version's tags; deploy.evaluate.promote adds them).
HIGHER_IS_BETTER = (
    "exact_match",
    "token_f1",
    "rouge_l",
    "stop_rate",
    "judge",
    "reward_accuracy",
    "reward_margin",
)
LOWER_IS_BETTER = ("empty_rate", "error_rate", "latency_p50_s", "latency_p95_s")
REPORTED_ONLY = ("answer_tokens_mean", "judge_errors")
# lm-evaluation-harness task metrics are named <task>_acc and <task>_acc_norm (deploy/evaluate/lm_eval_tasks.py),
# a generation task's <task>_contains (common/generation_tasks.py).
TASK_METRIC_SUFFIXES = ("_acc", "_acc_norm", "_contains")


class PromotionRefused(RuntimeError):
    """The candidate did not pass the gate; the alias or the traffic stayed where it was."""


class GateError(ValueError):
    """The gate's settings do not make sense (a tolerance on a metric without a better direction)."""


def higher_is_better(metric: str) -> bool | None:
    if metric in HIGHER_IS_BETTER or metric.endswith(TASK_METRIC_SUFFIXES):
        return True
    if metric in LOWER_IS_BETTER:
        return False
    return None


def tolerance_for(metric: str, tolerance: Mapping[str, float | None], tasks_tolerance: float | None):
    if metric in tolerance:
        return tolerance[metric]
    return tasks_tolerance if metric.endswith(TASK_METRIC_SUFFIXES) else None


@dataclass(frozen=True)
class Verdict:
    metric: str
    candidate: float | None
    baseline: float | None
    tolerance: float | None
    passed: bool | None  # None: reported, not gated
    note: str


@dataclass(frozen=True)
class Comparison:
    verdicts: list[Verdict]
    candidate_label: str
    baseline_label: str

    @property
    def passed(self) -> bool:
        return all(v.passed is not False for v in self.verdicts)

    @property
    def failed(self) -> list[str]:
        return [v.metric for v in self.verdicts if v.passed is False]

    def table(self) -> str:
        def value(x: float | None) -> str:
            return "-" if x is None else "not measured" if math.isnan(x) else f"{x:.3f}"

        width = max(len(self.candidate_label), len(self.baseline_label), 12)
        lines = [f"{'metric':<22}  {self.candidate_label:>{width}}  {self.baseline_label:>{width}}  verdict"]
        lines += [
            f"{v.metric:<22}  {value(v.candidate):>{width}}  {value(v.baseline):>{width}}  {v.note}"
            for v in self.verdicts
        ]
        return "\n".join(lines)


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def compare(
    candidate: Mapping[str, float],
    baseline: Mapping[str, float] | None,
    tolerance: Mapping[str, float | None],
    tasks_tolerance: float | None = None,
    candidate_label: str = "candidate",
    baseline_label: str = "baseline",
) -> Comparison:
    """Every metric either side measured, with its verdict; `baseline` None: nothing to compare with."""
    metrics = list(candidate) + [m for m in (baseline or {}) if m not in candidate]
    verdicts = []
    for metric in metrics:
        new, old = candidate.get(metric), (baseline or {}).get(metric)
        tol = tolerance_for(metric, tolerance, tasks_tolerance)
        direction = higher_is_better(metric)
        if tol is not None and direction is None:
            raise GateError(
                f"gate.tolerance.{metric}={tol}: {metric} has no better direction; set it to null "
                f"(gated metrics: {', '.join(HIGHER_IS_BETTER + LOWER_IS_BETTER)}, <task>_acc, <task>_acc_norm, <task>_contains)"
            )
        if tol is None:
            verdicts.append(Verdict(metric, new, old, None, None, "reported"))
        elif _missing(new) or (baseline is not None and _missing(old)):
            verdicts.append(Verdict(metric, new, old, tol, False, f"FAIL (not measured; tolerance {tol:g})"))
        elif baseline is None:
            verdicts.append(Verdict(metric, new, old, tol, None, "nothing to compare with"))
        else:
            gain = new - old if direction else old - new  # > 0: better, either way round
            passed = gain >= -tol
            change = "equal" if gain == 0 else f"{'better' if gain > 0 else 'worse'} by {abs(gain):.3f}"
            note = f"{'ok' if passed else 'FAIL'} ({change}; tolerance {tol:g})"
            verdicts.append(Verdict(metric, new, old, tol, passed, note))
    return Comparison(verdicts, candidate_label, baseline_label)


def compare_evaluations(candidate, baseline, gate_cfg, missing_baseline: str) -> Comparison:
    """`compare` of two deploy.evaluate.evaluation.Evaluation (their metrics and labels) under the `gate` config."""
    return compare(
        candidate.metrics,
        baseline.metrics if baseline else None,
        gate_cfg.tolerance,
        gate_cfg.tasks_tolerance,
        candidate.label,
        baseline.label if baseline else missing_baseline,
    )
