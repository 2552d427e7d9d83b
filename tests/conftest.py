"""Shared fixtures: composing the real configs, shrunk for speed, with outputs in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from train.config import PROJECT_ROOT, register_configs

CONF_DIR = str(PROJECT_ROOT / "conf")

register_configs()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    """One tiny-model build per test session (or the developer's cache when set)."""
    cache = os.environ.get("FINETUNE_PHI_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["FINETUNE_PHI_CACHE"] = cache
    return Path(cache)


@pytest.fixture(scope="module", autouse=True)
def no_ambient_mlflow_store():
    """Never let a developer's MLflow server, an Azure workspace, or another test's store
    receive a test's runs. (`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI.)"""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def compose_config(*overrides: str, tmp: Path | None = None):
    """The real train config as Hydra composes it; outputs under `tmp` when given."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    if tmp is not None:
        with open_dict(cfg):
            cfg.paths.output_root = str(tmp / "outputs")
            cfg.paths.output_dir = str(tmp / "outputs" / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it to the task function
    return cfg


@pytest.fixture
def compose_train():
    yield compose_config
    GlobalHydra.instance().clear()
