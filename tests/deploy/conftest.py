"""A registered tiny chat model for the deploy tests, logged as the training recipe logs it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest


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


def log_model(tmp_path, model_dir: str, name: str = "tiny-phi3-sft", tokenizer=None, served_tokenizer=None):
    """Log and register `model_dir` as the recipe does (tokenizer artifacts, llm/v1/chat model);
    `served_tokenizer` replaces the tokenizer inside the MLflow model (to simulate drift)."""
    import mlflow
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from train import tracking

    tokenizer = tokenizer or training_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("deploy-tests")
        with mlflow.start_run() as run:
            tracking.log_tokenizer_artifacts(tokenizer, tmp_path / f"tokenizer_info_{run.info.run_id}")
            version = tracking.log_chat_model(
                model,
                served_tokenizer or tokenizer,
                OmegaConf.create({"registered_model_name": name}),
                False,
                {},
            )
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exported it
        mlflow.set_tracking_uri(None)
    return Registered(uri, f"models:/{name}/{version.version}", run.info.run_id, model_dir)


@pytest.fixture(scope="session")
def registered(tmp_path_factory, tiny_cache) -> Registered:
    from train.tiny_model import ensure_tiny_phi3

    return log_model(tmp_path_factory.mktemp("registered"), ensure_tiny_phi3())
