"""`python -m deploy action=list`: what the registry holds, without opening `mlflow ui`.

One block per registered model: each version with its aliases, when it was registered, its
`eval.*` scores (written by `action=evaluate|promote`) and the gate's verdict tags, newest first.
"""

from __future__ import annotations

import datetime as dt

import mlflow
from mlflow.tracking import MlflowClient

# Version tags worth a column: the evaluation's scores and the gate's verdicts.
SHOWN_TAG_PREFIXES = ("eval.", "gate.")
HIDDEN_TAGS = {"eval.run_id"}  # a pointer, not a score: `mlflow ui` follows it


def version_line(version, aliases: list[str]) -> str:
    registered = dt.datetime.fromtimestamp(version.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M")
    tags = {
        k: v
        for k, v in sorted(version.tags.items())
        if k.startswith(SHOWN_TAG_PREFIXES) and k not in HIDDEN_TAGS
    }
    scores = "  ".join(f"{k}={_short(v)}" for k, v in tags.items()) or "not evaluated"
    held = " ".join(f"@{a}" for a in aliases)
    return f"  v{version.version:<4} {held:<12} {registered}  {scores}"


def _short(value: str) -> str:
    try:
        return f"{float(value):.3g}"
    except ValueError:
        return value


def list_models(tracking_uri: str) -> list[str]:
    """The lines `action=list` prints (also returned, for tests)."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    lines = []
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        aliases_of: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            aliases_of.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name='{model.name}'")
        lines.append(f"{model.name} ({len(versions)} version{'s' if len(versions) != 1 else ''})")
        for version in sorted(versions, key=lambda v: -int(v.version)):
            lines.append(version_line(version, sorted(aliases_of.get(str(version.version), []))))
    if not lines:
        lines.append(f"no registered models in {tracking_uri}; `python -m train` registers one")
    else:
        lines.append(
            "next: python -m deploy action=promote model.name=NAME model.version=N  "
            "(moves @champion if the gate passes); make serve MODEL=NAME serves @champion"
        )
    return lines


def run_list(cfg) -> list[str]:
    """action=list: print every registered model's versions, aliases and eval.* tags."""
    lines = list_models(cfg.tracking_uri)
    print("\n".join(lines))
    return lines
