"""A registered tiny chat model for the deploy tests, logged as the training recipe logs it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


def compose_deploy(*overrides: str):
    """The real `python -m deploy` config as Hydra composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import deploy.__main__  # noqa: F401  (registers the schemas and the project_root resolver)
    from common.paths import PROJECT_ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf" / "deploy"), version_base="1.3"):
        return compose("deploy", overrides=list(overrides))


@dataclass(frozen=True)
class Registered:
    tracking_uri: str
    uri: str  # models:/NAME/VERSION
    run_id: str
    model_dir: str  # the tiny model directory training starts from


def training_tokenizer(model_dir: str):
    """The tokenizer exactly as the recipe prepares it (train.model.load_tokenizer)."""
    from omegaconf import OmegaConf

    from train.config import ModelConfig
    from train.model import load_tokenizer

    return load_tokenizer(OmegaConf.structured(ModelConfig(model_dir, "tiny")))


def rendered_sample(tokenizer, rows: int = 8) -> list[dict]:
    """The bundled held-out conversations with the ids and labels data preparation gives the trainer
    (what the recipe logs as tokenizer/rendered.jsonl)."""
    import json

    from common.paths import PROJECT_ROOT
    from train.prepare import ChatTokenizer

    lines = (PROJECT_ROOT / "train" / "assets" / "sample_test.jsonl").read_text(encoding="utf-8").splitlines()
    conversations = [json.loads(line)["messages"] for line in lines[:rows]]
    encoded = ChatTokenizer(tokenizer).encode(conversations)
    return [
        {"messages": m, "input_ids": e.input_ids, "labels": e.labels} for m, e in zip(conversations, encoded)
    ]


def log_model(
    tmp_path,
    model_dir: str,
    name: str = "tiny-phi3-sft",
    tokenizer=None,
    served_tokenizer=None,
    tracking_uri: str | None = None,
):
    """Log and register `model_dir` as the recipe does (tokenizer artifacts, llm/v1/chat model), in
    a sqlite store under `tmp_path` or at `tracking_uri`; `served_tokenizer` replaces the tokenizer
    inside the MLflow model (to simulate drift)."""
    import mlflow
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from train import tracking

    tokenizer = tokenizer or training_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rendered = rendered_sample(tokenizer)
    uri = tracking_uri or f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        # A local store keeps its artifacts beside it (MLflow's default would be ./mlruns in the
        # checkout); a server stores them where it serves artifacts.
        artifacts = None if tracking_uri else (tmp_path / "artifacts").as_uri()
        experiment = mlflow.create_experiment(f"deploy-tests-{name}", artifact_location=artifacts)
        with mlflow.start_run(experiment_id=experiment) as run:
            tracking.log_tokenizer_artifacts(
                tokenizer, tmp_path / f"tokenizer_info_{run.info.run_id}", rendered
            )
            version = tracking.log_chat_model(
                model,
                served_tokenizer or tokenizer,
                OmegaConf.create({"registered_model_name": name}),
                False,
                {},
            )
    finally:
        mlflow.set_tracking_uri(None)
    return Registered(uri, f"models:/{name}/{version.version}", run.info.run_id, model_dir)


@pytest.fixture(scope="session")
def registered(tmp_path_factory, tiny_cache) -> Registered:
    from train.tiny_model import ensure_tiny_phi3

    return log_model(tmp_path_factory.mktemp("registered"), ensure_tiny_phi3())


@dataclass(frozen=True)
class TrainedPair:
    """One MLflow store with the tiny model trained as `python -m train` trains it (version 1) and
    trained for 2 steps only (version 2), each registered by the recipe with its held-out set."""

    tracking_uri: str
    output_root: str
    name: str = "tiny-phi3-sft"


@pytest.fixture(scope="session")
def trained_pair(tmp_path_factory, tiny_cache) -> TrainedPair:
    """Trained once per session for every test that needs a good and a bad version (slow: the
    demo's whole training, ~35 s on an idle 2-core machine). Fewer steps do not make a good
    model: at 40 steps it still answers nothing at all, like the 2-step one."""
    from omegaconf import open_dict

    from tests.conftest import compose_config
    from train.recipe import run

    tmp = tmp_path_factory.mktemp("trained-pair")
    tracking_uri = f"sqlite:///{tmp}/outputs/mlflow.db"
    for run_name, overrides in (("trained", ()), ("two-steps", ("sft.max_steps=2",))):
        cfg = compose_config(
            "sft.disable_tqdm=true",
            "eval.generate_samples=0",
            f"logger.tracking_uri={tracking_uri}",
            *overrides,
            tmp=tmp,
        )
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp / "outputs" / run_name)
        run(cfg)
    import mlflow

    mlflow.set_tracking_uri(None)  # the recipe set it (a module global, and exported)
    return TrainedPair(tracking_uri, str(tmp / "outputs"))
