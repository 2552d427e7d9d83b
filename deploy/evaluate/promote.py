"""`python -m deploy action=promote model.version=N`: the promotion gate over the registry alias.

The candidate, the version holding `gate.alias` (default `champion`) and every version promoted to
that alias before (tagged `gate.promoted.<alias>`) are evaluated here on the candidate's held-out
set (deploy/evaluate/evaluate.py) and compared metric by metric (deploy/evaluate/gate.py). The
alias moves only when the candidate is within `gate.tolerance` of the holder AND of the best value
each metric ever had among the promoted versions: against the holder alone, successive
promotions each a little worse than the last could ratchet quality down without bound. Just
before the alias is set the holder is read again: if another promotion moved it meanwhile, this
one is refused (what was compared is no longer what would be replaced). A refusal tags the
candidate with why and exits with status 1.
"""

from __future__ import annotations

import math

import mlflow
from mlflow.tracking import MlflowClient

from deploy.evaluate.cases import held_out_cases
from deploy.evaluate.evaluate import evaluate_model
from deploy.evaluate.gate import (
    Comparison,
    GateError,
    PromotionRefused,
    compare,
    compare_evaluations,
    higher_is_better,
)
from deploy.evaluate.tables import worse_rows
from deploy.registry.find import alias_holder, registered_version, training_run_id, version_ref

# What a preference-tuned version measured in training (train/preference.py tags the version):
# held-out reward accuracy and margin against its starting model, after training.
TRAINING_REWARD_TAGS = {"reward_accuracy": "reward_accuracy_after", "reward_margin": "reward_margin_after"}


def training_rewards(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    """The version's reward metrics from its tags; none for an SFT version."""
    tags = client.get_model_version(name, version).tags
    return {metric: float(tags[tag]) for metric, tag in TRAINING_REWARD_TAGS.items() if tag in tags}


def promoted_tag(alias: str) -> str:
    """The tag a version gets when it is promoted to `alias` (kept after the alias moves on)."""
    return f"gate.promoted.{alias}"


def ever_promoted(client: MlflowClient, name: str, alias: str) -> list[str]:
    """Every version of `name` tagged as promoted to `alias` at some time, oldest first."""
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted((str(v.version) for v in versions if promoted_tag(alias) in (v.tags or {})), key=int)


def best_metrics(evaluations: list) -> dict[str, float]:
    """Per gated metric, the best value any of `evaluations` measured (unmeasured ones left out)."""
    best: dict[str, float] = {}
    for evaluation in evaluations:
        for metric, value in evaluation.metrics.items():
            direction = higher_is_better(metric)
            if direction is None or value is None or math.isnan(value):
                continue
            if metric not in best or (value > best[metric] if direction else value < best[metric]):
                best[metric] = value
    return best


def run_promote(cfg) -> Comparison | None:
    """Move `gate.alias` to `model.version` when it is within `gate.tolerance` of the holder and of
    the best promoted before, all evaluated here on the same conversations; else raise
    PromotionRefused, the alias unmoved."""
    if cfg.model.get("version") is None or cfg.model.get("alias") or cfg.model.get("uri"):
        raise GateError("action=promote takes a registered version: model.version=N")
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    name, alias = cfg.model.name, cfg.gate.alias
    version = registered_version(client, name, cfg.model.version)
    holder = alias_holder(client, name, alias)
    if holder == version:
        print(f"{name} v{version} already holds @{alias}; nothing to do")
        return None
    history = [v for v in ever_promoted(client, name, alias) if v not in (holder, version)]
    candidate = version_ref(name, version)
    cases, source = held_out_cases(cfg.eval, training_run_id(candidate), cfg.eval.max_rows)
    earlier_note = f" and v{', v'.join(history)} (promoted before)" if history else ""
    print(
        f"evaluating {name} v{version} against @{alias} ({f'v{holder}' if holder else 'none yet'}){earlier_note} "
        f"on {len(cases)} conversations from {source} ...",
        flush=True,
    )

    def evaluate(v: str, label: str):
        evaluation = evaluate_model(
            version_ref(name, v), cases, source, label, cfg.eval, cfg.tracking_uri, cfg.parity.check
        )
        evaluation.metrics.update(training_rewards(client, name, v))  # DPO/KTO: measured in training
        return evaluation

    new = evaluate(version, f"v{version}")
    old = evaluate(holder, f"v{holder} @{alias}") if holder is not None else None
    earlier = [evaluate(v, f"v{v}") for v in history]
    comparison = compare_evaluations(new, old, cfg.gate, missing_baseline="(no holder)")
    print(comparison.table())
    against_best = None
    if old is not None or earlier:
        best = best_metrics([e for e in (old, *earlier) if e is not None])
        against_best = compare(
            {m: v for m, v in new.metrics.items() if m in best},
            best,
            cfg.gate.tolerance,
            cfg.gate.tasks_tolerance,
            new.label,
            "best promoted",
        )
        print(f"\nagainst the best each metric has been among the versions promoted to @{alias}:")
        print(against_best.table())
    failed = comparison.failed + [
        f"{m} (best promoted)" for m in (against_best.failed if against_best else [])
    ]
    if failed:
        refuse(client, name, version, alias, holder, failed, new, old)
    set_alias_unless_moved(client, name, alias, version, holder)
    return comparison


def refuse(client, name: str, version: str, alias: str, holder, failed: list[str], new, old) -> None:
    if old is not None:
        print(f"\nwhere v{version} answers worse than the holder:\n{worse_rows(new.rows, old.rows)}")
    client.set_model_version_tag(name, version, "gate.refused", f"{alias} v{holder}: {', '.join(failed)}")
    where = f"stays on v{holder}" if holder else "stays unset"
    raise PromotionRefused(f"v{version} fails the gate on {', '.join(failed)}; @{alias} {where}")


def set_alias_unless_moved(
    client: MlflowClient, name: str, alias: str, version: str, holder: str | None
) -> None:
    """Set the alias, unless another promotion moved it while this one evaluated. (MLflow has no
    compare-and-set: the window left is this read and the write after it, not the minutes of evaluation.)"""
    now = alias_holder(client, name, alias)
    if now != holder:
        raise PromotionRefused(
            f"@{alias} moved from {f'v{holder}' if holder else 'no version'} to v{now} while v{version} was "
            f"evaluated; nothing was changed. Run the promotion again to compare v{version} with v{now}"
        )
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "gate.promoted_over", holder or "none")
    client.set_model_version_tag(name, version, promoted_tag(alias), "true")
    if holder is not None:
        client.set_model_version_tag(name, holder, promoted_tag(alias), "true")  # one promoted before tagging
    if holder is None:
        print(f"no version held @{alias} yet: promoted v{version} on its own metrics")
    else:
        print(f"promoted: @{alias} moved from v{holder} to v{version}")
    print(f"next: make serve MODEL={name}  (serves @{alias}: v{version}), or make chat MODEL={name}")
