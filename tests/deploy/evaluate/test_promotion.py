"""action=promote: the trained tiny model takes the `champion` alias, the 2-step one is refused."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from deploy import __main__ as cli
from tests.conftest import run_module
from tests.deploy.conftest import compose_deploy

pytestmark = pytest.mark.slow


def champion(client: MlflowClient, name: str) -> str | None:
    version = client.get_registered_model(name).aliases.get("champion")
    return None if version is None else str(version)


def test_the_trained_model_is_promoted_and_the_two_step_model_refused(trained_pair, capsys):
    store = [f"tracking_uri={trained_pair.tracking_uri}", f"output_root={trained_pair.output_root}"]
    client = MlflowClient(trained_pair.tracking_uri)
    assert champion(client, trained_pair.name) is None

    promoted = cli.run(compose_deploy("action=promote", "model.version=1", *store))
    assert promoted.passed
    assert "no version held @champion yet: promoted v1 on its own metrics" in capsys.readouterr().out
    assert champion(client, trained_pair.name) == "1"

    refused = run_module("deploy", "action=promote", "model.version=2", *store)
    print(refused.stdout)  # the side-by-side table, for -s
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "deploy: v2 fails the gate on" in refused.stderr and "@champion stays on v1" in refused.stderr
    table = refused.stdout[refused.stdout.index("metric ") :]
    assert "v2" in table.splitlines()[0] and "v1 @champion" in table.splitlines()[0]
    assert any(line.startswith("exact_match") and "FAIL (worse by" in line for line in table.splitlines())
    assert champion(client, trained_pair.name) == "1"

    # Both were evaluated on the candidate's held-out set (all of it), each as a run in its own
    # training run's experiment, and each version is tagged with its latest evaluation.
    v2 = client.get_model_version(trained_pair.name, "2")
    for version in ("1", "2"):
        mv = client.get_model_version(trained_pair.name, version)
        run = client.get_run(mv.tags["eval.run_id"])
        assert run.info.experiment_id == client.get_run(mv.run_id).info.experiment_id
        assert run.data.tags["eval.source"] == f"runs:/{v2.run_id}/data/test.jsonl"
        assert run.data.tags["eval.rows"] == "200"  # the whole bundled held-out set
        assert float(mv.tags["eval.exact_match"]) == pytest.approx(run.data.metrics["exact_match"], rel=1e-5)
    assert v2.tags["gate.refused"].startswith("champion v1: exact_match")
    assert float(v2.tags["eval.exact_match"]) < float(
        client.get_model_version(trained_pair.name, "1").tags["eval.exact_match"]
    )
