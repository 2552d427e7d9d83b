"""deploy finds registered versions by number, alias or latest."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from deploy.registry.find import ModelNotFound, ModelRef, alias_holder, model_uri, resolve


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One store for the module: creating an MLflow sqlite schema takes seconds.
    tmp_path = tmp_path_factory.mktemp("registry")
    client = MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", registry_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "champion", "2")
    return client


def test_latest_version_by_default(client):
    assert model_uri(client, "m") == "models:/m/3"


def test_explicit_version_and_alias(client):
    assert model_uri(client, "m", version=1) == "models:/m/1"
    assert model_uri(client, "m", alias="champion") == "models:/m@champion"


def test_missing_name_or_version_says_what_exists(client):
    with pytest.raises(ModelNotFound, match="python -m train"):
        model_uri(client, "nope")
    with pytest.raises(ModelNotFound, match="no version with the alias 'challenger'"):
        model_uri(client, "m", alias="challenger")
    with pytest.raises(ModelNotFound, match=r"\[1, 2, 3\]"):
        model_uri(client, "m", version=7)


def model_cfg(**keys):
    from omegaconf import OmegaConf

    base = {"name": "m", "version": None, "alias": None, "uri": None, "azureml_job": None}
    return OmegaConf.create({**base, **keys})


def test_resolve_latest_alias_version_and_explicit_uri(client, tmp_path):
    assert resolve(model_cfg(), client, tmp_path, False) == ModelRef("models:/m/3", "m", "3")
    assert resolve(model_cfg(alias="champion"), client, tmp_path, False) == ModelRef(
        "models:/m@champion", "m", "2"
    )
    assert resolve(model_cfg(uri="/models/x"), None, tmp_path, False).uri == "/models/x"


def test_azureml_job_by_name_or_the_last_one_training_submitted(tmp_path):
    with pytest.raises(
        ModelNotFound, match=r"last_job.json does not exist: submit .*python -m train target=azureml"
    ):
        resolve(model_cfg(azureml_job="last"), None, tmp_path, True)
    (tmp_path / "azureml").mkdir()
    (tmp_path / "azureml" / "last_job.json").write_text(
        json.dumps({"job_name": "sleepy_fox_1", "studio_url": "x"})
    )
    ref = resolve(model_cfg(azureml_job="last"), None, tmp_path, for_azureml=True)
    assert ref == ModelRef(
        "azureml://jobs/sleepy_fox_1/outputs/artifacts/paths/model/", "m", azureml_job="sleepy_fox_1"
    )
    # Here, through MLflow: the job name is the run id in the workspace's tracking store.
    assert (
        resolve(model_cfg(azureml_job="other_job"), None, tmp_path, for_azureml=False).uri
        == "runs:/other_job/model"
    )


def test_alias_holder_is_none_only_when_no_version_holds_it(client):
    assert alias_holder(client, "m", "champion") == "2"
    assert alias_holder(client, "m", "challenger") is None


def test_with_neither_version_nor_alias_the_champion_is_served_and_said(client, tmp_path, capsys):
    """What passed the gate is served, not a newer version the gate refused; the output says which."""
    ref = resolve(model_cfg(), client, tmp_path, False, default_alias="champion")
    assert ref == ModelRef("models:/m/2", "m", "2")
    assert "m v2 (@champion; the latest is v3)" in capsys.readouterr().out
    client.create_registered_model("fresh")
    client.create_model_version("fresh", source=str(tmp_path))
    ref = resolve(model_cfg(name="fresh"), client, tmp_path, False, default_alias="champion")
    assert ref == ModelRef("models:/fresh/1", "fresh", "1")
    assert "no version holds @champion yet" in capsys.readouterr().out
