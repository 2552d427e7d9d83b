"""MLflow for the recipe: params within Azure ML's limits, metrics, artifacts, the chat model.

The seed recipe switched MLflow off (DISABLE_MLFLOW_INTEGRATION) because transformers'
MLflowCallback logs every TrainingArguments field and the model config, over Azure ML's
200-param limit. Here the recipe logs a flattened, bounded set of params itself and the
callback only logs metrics.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from transformers.integrations import MLflowCallback

log = logging.getLogger(__name__)

# Azure ML rejects runs with more than 200 params; MLflow caps a value at 6000 chars.
MAX_PARAMS = 200
MAX_PARAM_VALUE = 500


class MetricsOnlyMLflowCallback(MLflowCallback):
    """transformers' MLflowCallback minus its unbounded param dump.

    Its `on_log` logs train/eval metrics (loss, learning rate, grad norm, tokens/s) to the
    run the recipe opened; params, the run's lifetime and the model stay with the recipe.
    `setup` is the only place the parent logs params, so it is replaced by the state
    `on_log` needs.
    """

    def setup(self, args, state, model):
        self._async_log = True
        self._initialized = True


def tracking_uri(logger_cfg) -> str:
    uri = logger_cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def start_experiment(logger_cfg, artifact_root: Path) -> str:
    """Point MLflow at the configured store and return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri(logger_cfg))
    experiment = mlflow.get_experiment_by_name(logger_cfg.experiment_name)
    if experiment is None:
        # Local stores keep artifacts beside the database, not in ./mlruns of the cwd.
        location = artifact_root.as_uri() if logger_cfg.tracking_uri.startswith("sqlite:") else None
        return mlflow.create_experiment(logger_cfg.experiment_name, artifact_location=location)
    return experiment.experiment_id


def flatten_params(cfg: DictConfig, sft_defaults: dict) -> dict[str, str]:
    """The run's params: every model/data/peft/eval key, and the sft keys that differ
    from TRL's defaults (the full resolved config is logged as an artifact)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    params: dict[str, str] = {"seed": str(cfg.seed), "profile": str(cfg.get("profile"))}
    for group in ("model", "data", "peft", "eval"):
        for key, value in container[group].items():
            params[f"{group}.{key}"] = value
    for key, value in container["sft"].items():
        if sft_defaults.get(key, object()) != value:
            params[f"sft.{key}"] = value
    flat = {k: str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}
    if len(flat) > MAX_PARAMS:
        raise ValueError(
            f"{len(flat)} params exceed Azure ML's limit of {MAX_PARAMS}; "
            "reduce the number of sft overrides (the full config is logged as an artifact)"
        )
    return flat


def git_sha(root: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pip_requirements(with_peft: bool) -> list[str]:
    """Pinned serving requirements, from the versions installed here.

    Given explicitly because MLflow's inference adds torchvision whenever torch is used,
    and there is no CPU torchvision wheel for this stack.
    """
    names = ["mlflow", "torch", "transformers", "accelerate", "tokenizers", "safetensors"]
    if with_peft:
        names.append("peft")
    return [f"{n}=={importlib.metadata.version(n).split('+')[0]}" for n in names]


def log_loss_curve(log_history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_tokenizer_artifacts(tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    special = {
        name: {"token": getattr(tokenizer, name), "id": getattr(tokenizer, f"{name}_id")}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    (out_dir / "special_tokens.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    mlflow.log_artifacts(str(out_dir), artifact_path="tokenizer")


def log_prepared_data(prepared) -> None:
    """Where the data came from and what preparation kept, dropped and counted (data/ artifacts)."""
    mlflow.set_tag("data_dir", str(prepared.dir))
    mlflow.log_artifact(str(prepared.dir / "stats.json"), artifact_path="data")
    if prepared.stats["rejected"] or prepared.stats["dropped_too_long"]:
        mlflow.log_artifact(str(prepared.dir / "rejects.jsonl"), artifact_path="data")
    counts = (
        "rows_read",
        "rejected",
        "duplicates_removed",
        "dropped_too_long",
        "truncated_turns",
        "train",
        "test",
    )
    mlflow.log_metrics({f"data_{k}": prepared.stats[k] for k in counts})
    mlflow.log_metrics({f"data_tokens_{k}": v for k, v in prepared.stats["tokens"].items()})


def log_chat_model(model, tokenizer, logger_cfg, with_peft: bool, tags: dict[str, str]):
    """Log the model as an MLflow transformers chat model and register it; returns the
    registered ModelVersion (or None when registration is off)."""
    model_info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name="model",
        task="llm/v1/chat",
        pip_requirements=pip_requirements(with_peft),
        registered_model_name=logger_cfg.registered_model_name,
    )
    version = None
    if logger_cfg.registered_model_name:
        client = MlflowClient()
        version = client.get_model_version(
            logger_cfg.registered_model_name, model_info.registered_model_version
        )
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)
    return model_info, version
