"""`python -m deploy action=list`: registered models, versions, aliases and eval.* tags, no `mlflow ui`."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from common.paths import PROJECT_ROOT


def test_list_shows_versions_aliases_and_scores(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("chats-sft")
    for _ in range(2):
        client.create_model_version("chats-sft", source=str(tmp_path))
    client.set_model_version_tag("chats-sft", "1", "eval.exact_match", "0.2175")
    client.set_model_version_tag("chats-sft", "1", "eval.run_id", "abc")
    client.set_model_version_tag("chats-sft", "2", "gate.refused", "champion v1: exact_match")
    client.set_registered_model_alias("chats-sft", "champion", "1")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    listed = subprocess.run(
        [sys.executable, "-m", "deploy", "action=list"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "chats-sft (2 versions)" in lines
    v2, v1 = (next(line for line in lines if line.startswith(f"  v{n} ")) for n in (2, 1))
    assert "@champion" in v1 and "eval.exact_match=0.217" in v1 and "eval.run_id" not in v1
    assert "@champion" not in v2 and "gate.refused=champion v1: exact_match" in v2
    assert lines[-1].startswith("next: ")
