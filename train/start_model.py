"""`model.uri`: start training from a registered MLflow model (an SFT'd champion, say).

    python -m train method=dpo model.uri=models:/finetune-phi-tiny@champion

The URI is pinned to a version first (an alias moves; the run records which version it started
from), the version's `model/` artifact is downloaded once into the cache, and its tokenizer
(MLflow's transformers flavor keeps it under components/tokenizer/) is put beside the weights, so
the directory loads like any local checkout through `model.name_or_path`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, open_dict

from train.errors import ConfigError

log = logging.getLogger(__name__)


def pinned_uri(uri: str, client) -> str:
    """models:/NAME@ALIAS -> models:/NAME/VERSION (other URIs as given)."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri.removeprefix("models:/").split("@", 1)
        try:
            version = client.get_model_version_by_alias(name, alias)
        except Exception as err:  # the registry's own message names what is missing
            raise ConfigError(f"model.uri={uri}: no such registered model or alias ({err})") from None
        return f"models:/{name}/{version.version}"
    return uri


def resolve_model_uri(cfg: DictConfig) -> None:
    """With `model.uri` set, download it (once) and point `model.name_or_path` at the directory."""
    uri = cfg.model.uri
    if not uri:
        return
    import mlflow
    from mlflow import MlflowClient

    from train.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg.logger))
    pinned = pinned_uri(uri, MlflowClient())
    key = hashlib.sha256(f"{mlflow.get_tracking_uri()} {pinned}".encode()).hexdigest()[:16]
    root = Path(cfg.paths.cache_dir) / "registered" / key
    model_dir = root / "model"
    if not (model_dir / "config.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        log.info("downloading %s (%s)", pinned, uri)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(root))
        except Exception as err:
            raise ConfigError(f"model.uri={uri}: could not download {pinned} ({err})") from None
        if not (model_dir / "config.json").is_file():
            raise ConfigError(
                f"model.uri={uri}: {pinned} holds no full model (an adapter-only version?); start from a "
                "version logged with logger.peft_save=merged"
            )
        for item in (root / "components" / "tokenizer").glob("*"):
            shutil.copy2(item, model_dir / item.name)
    log.info("starting from %s: %s", pinned, model_dir)
    with open_dict(cfg):
        cfg.model.name_or_path = str(model_dir)
        cfg.model.uri = pinned  # the version trained from, in the params and the resolved config
