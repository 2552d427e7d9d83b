"""MLflow inside an Azure ML job: the tracking URI is azureml://, served by the azureml-mlflow
plugin. Checked offline with the installed (pinned) mlflow and azureml-mlflow."""

from __future__ import annotations

import importlib.metadata
import socket

import mlflow
import pytest
from packaging.requirements import Requirement

from common.paths import PROJECT_ROOT
from tests.fake_arm import WORKSPACE, unsigned_jwt  # azureml-mlflow decodes the job token only for exp
from tests.train.test_azureml_environment import pins

TRACKING_URI = f"azureml://westeurope.api.azureml.ms/mlflow/v1.0{WORKSPACE}"
RUN_ARTIFACTS = f"azureml://westeurope.api.azureml.ms/mlflow/v2.0{WORKSPACE}/experiments/e1/runs/r1/artifacts"


@pytest.fixture
def inside_an_azureml_job(monkeypatch):
    """The variables an Azure ML command job sets for MLflow, and no network at all."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING_URI)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", unsigned_jwt())
    monkeypatch.setenv("MLFLOW_RUN_ID", "r1")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "e1")
    # A named cloud comes from azureml-mlflow's built-in list; unnamed, it first fetches
    # management.azure.com/metadata/endpoints (a job has the network for that; a test has not).
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network use while resolving the artifact repository: {args[-1:]}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    # An earlier test's mlflow.set_tracking_uri(...) outranks the variable: set it as the job has it.
    mlflow.set_tracking_uri(TRACKING_URI)
    yield
    mlflow.set_tracking_uri(None)


def test_mlflow_finds_the_azureml_artifact_repository_for_a_job_run(inside_an_azureml_job):
    """What every artifact upload in a job does first. With mlflow 3.17 and azureml-mlflow 1.60 it
    raised TypeError: azureml_artifacts_builder() got an unexpected keyword argument 'tracking_uri'
    (Azure/azure-sdk-for-python#43661, #42626)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(RUN_ARTIFACTS, tracking_uri=TRACKING_URI)
    assert type(repository).__name__ == "AzureMLflowArtifactRepository"
    assert type(repository.artifacts).__name__ == "RunArtifactsClient"


def test_constraints_pin_an_mlflow_that_the_pinned_azureml_mlflow_accepts():
    pinned = pins((PROJECT_ROOT / "constraints.txt").read_text())
    names = ("mlflow", "mlflow-skinny", "azureml-mlflow")
    # The tests above ran against exactly the pins (make setup installs constraints.txt).
    assert {n: importlib.metadata.version(n) for n in names} == {n: pinned[n] for n in names}
    # What each wheel itself requires (its metadata), against the pinned versions.
    (azureml_wants,) = [
        r
        for r in map(Requirement, importlib.metadata.requires("azureml-mlflow"))
        if r.name == "mlflow-skinny"
    ]
    assert azureml_wants.specifier.contains(pinned["mlflow-skinny"]), azureml_wants
    (mlflow_wants,) = [
        r for r in map(Requirement, importlib.metadata.requires("mlflow")) if r.name == "mlflow-skinny"
    ]
    assert mlflow_wants.specifier.contains(pinned["mlflow-skinny"]), mlflow_wants
