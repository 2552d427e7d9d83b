"""`python -m deploy action=promote model.version=N`: the promotion gate over the registry alias.

The candidate and the version holding `gate.alias` (default `champion`) are evaluated here on
the candidate's held-out set (deploy/evaluate/evaluate.py), compared metric by metric
(deploy/evaluate/gate.py), and the alias moves only when the candidate is within
`gate.tolerance`; a refusal tags the candidate with why and exits with status 1.
"""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from deploy.evaluate.cases import held_out_cases
from deploy.evaluate.evaluate import evaluate_model
from deploy.evaluate.gate import Comparison, GateError, PromotionRefused, compare_evaluations
from deploy.evaluate.tables import worse_rows
from deploy.registry.find import alias_holder, registered_version, training_run_id, version_ref

# What a preference-tuned version measured in training (train/preference.py tags the version):
# held-out reward accuracy and margin against its starting model, after training.
TRAINING_REWARD_TAGS = {"reward_accuracy": "reward_accuracy_after", "reward_margin": "reward_margin_after"}


def training_rewards(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    """The version's reward metrics from its tags; none for an SFT version."""
    tags = client.get_model_version(name, version).tags
    return {metric: float(tags[tag]) for metric, tag in TRAINING_REWARD_TAGS.items() if tag in tags}


def run_promote(cfg) -> Comparison | None:
    """Move `gate.alias` to `model.version` when it is within `gate.tolerance` of the holder, both
    evaluated here on the same conversations; else raise PromotionRefused, the alias unmoved."""
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
    candidate = version_ref(name, version)
    cases, source = held_out_cases(cfg.eval, training_run_id(candidate), cfg.eval.max_rows)
    print(
        f"evaluating {name} v{version} against @{alias} ({f'v{holder}' if holder else 'none yet'}) "
        f"on {len(cases)} conversations from {source} ...",
        flush=True,
    )
    loading = {"tracking_uri": cfg.tracking_uri, "check_parity": cfg.parity.check}
    new = evaluate_model(candidate, cases, source, f"v{version}", cfg.eval, **loading)
    old = None
    if holder is not None:
        holder_ref = version_ref(name, holder)
        old = evaluate_model(holder_ref, cases, source, f"v{holder} @{alias}", cfg.eval, **loading)
    new.metrics.update(training_rewards(client, name, version))
    if old is not None:
        old.metrics.update(training_rewards(client, name, holder))
    comparison = compare_evaluations(new, old, cfg.gate, missing_baseline="(no holder)")
    print(comparison.table())
    if not comparison.passed:
        if old is not None:
            print(f"\nwhere v{version} answers worse:\n{worse_rows(new.rows, old.rows)}")
        client.set_model_version_tag(
            name, version, "gate.refused", f"{alias} v{holder}: {', '.join(comparison.failed)}"
        )
        where = f"stays on v{holder}" if holder else "stays unset"
        raise PromotionRefused(
            f"v{version} fails the gate on {', '.join(comparison.failed)}; @{alias} {where}"
        )
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "gate.promoted_over", holder or "none")
    if holder is None:
        print(f"no version held @{alias} yet: promoted v{version} on its own metrics")
    else:
        print(f"promoted: @{alias} moved from v{holder} to v{version}")
    print(f"next: make serve MODEL={name}  (serves @{alias}: v{version}), or make chat MODEL={name}")
    return comparison
