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


def test_successive_promotions_cannot_ratchet_quality_down(trained_pair):
    """v1 (trained) is promoted; v2 (two steps) replaces it under a tolerance loose enough to let
    it; v3, the same weights as v2, is as good as the holder v2 but far worse than v1 was: it is
    refused against the best each metric has been among the promoted versions."""
    store = [
        f"tracking_uri={trained_pair.tracking_uri}",
        f"output_root={trained_pair.output_root}",
        "gate.alias=ratchet",
        "eval.max_rows=40",
    ]
    client = MlflowClient(trained_pair.tracking_uri)
    assert cli.run(compose_deploy("action=promote", "model.version=1", *store)).passed
    loose = [
        f"gate.tolerance.{m}=1.0" for m in ("exact_match", "token_f1", "rouge_l", "stop_rate", "empty_rate")
    ]
    assert cli.run(compose_deploy("action=promote", "model.version=2", *store, *loose)).passed
    assert client.get_registered_model(trained_pair.name).aliases["ratchet"] == 2
    v2 = client.get_model_version(trained_pair.name, "2")
    v3 = client.create_model_version(trained_pair.name, v2.source, v2.run_id).version

    refused = run_module("deploy", "action=promote", f"model.version={v3}", *store)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "(best promoted)" in refused.stderr and "@ratchet stays on v2" in refused.stderr
    against_holder, against_best = refused.stdout.split("against the best each metric has been")
    assert not any("FAIL" in line for line in against_holder.splitlines() if line.startswith("exact_match"))
    assert any(line.startswith("exact_match") and "FAIL" in line for line in against_best.splitlines())
    assert client.get_registered_model(trained_pair.name).aliases["ratchet"] == 2


def test_a_promotion_whose_holder_moved_meanwhile_is_refused(trained_pair, monkeypatch):
    """Another promotion sets the alias while this one evaluates (here: as its first model is
    evaluated): what was compared is no longer what would be replaced, so nothing changes."""
    from deploy.evaluate import promote

    client = MlflowClient(trained_pair.tracking_uri)
    evaluate = promote.evaluate_model

    def evaluate_while_another_promotion_lands(*args, **kwargs):
        client.set_registered_model_alias(trained_pair.name, "raced", "2")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(promote, "evaluate_model", evaluate_while_another_promotion_lands)
    store = [f"tracking_uri={trained_pair.tracking_uri}", f"output_root={trained_pair.output_root}"]
    cfg = compose_deploy("action=promote", "model.version=1", "gate.alias=raced", "eval.max_rows=10", *store)
    with pytest.raises(
        promote.PromotionRefused, match="@raced moved from no version to v2 while v1 was evaluated"
    ):
        cli.run(cfg)
    assert client.get_registered_model(trained_pair.name).aliases["raced"] == 2
