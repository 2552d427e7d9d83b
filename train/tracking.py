"""MLflow for the recipe: params, tags and metrics within Azure ML's limits, artifacts, the chat model.

The seed recipe switched MLflow off (DISABLE_MLFLOW_INTEGRATION) because transformers'
MLflowCallback logs every TrainingArguments field and the model config, over Azure ML's
200-param limit. Here the recipe logs a flattened, bounded set of params itself and the
callback only logs metrics.

The same calls serve every tracking server: a local sqlite store, an MLflow server (2.x included)
and an Azure ML workspace (inside a job, through azureml-mlflow). They avoid what Azure's server
lacks: MLflow 3's logged-models API (see `log_chat_model`).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from transformers.integrations import MLflowCallback

from common.rendering import fixed_inputs
from train.errors import ConfigError

log = logging.getLogger(__name__)

# Azure ML's limits per run (learn.microsoft.com/azure/machine-learning/resource-limits-capacity,
# "Runs" and "Metrics"); 200 params is its server's answer past it (azure-sdk-for-python#35685).
MAX_PARAMS = 200
MAX_PARAM_VALUE = 500  # MLflow itself caps a value at 6000 chars
MAX_TAGS = 50
MAX_TAG_KEY = 100
MAX_TAG_VALUE = 1000
MAX_METRIC_NAMES = 50
# The run's tags besides `logger.tags`: the recipe's own (profile, hydra.overrides, run_id,
# world_size, data_dir, resumed_from, interrupted_at_step) and MLflow's system tags
# (mlflow.user, mlflow.source.*, mlflow.runName, mlflow.parentRunId, ...).
RESERVED_TAGS = 20
MODEL_ARTIFACT_PATH = "model"  # the run's model/ folder: azureml://jobs/<job>/outputs/artifacts/paths/model/


class TrackingLimitError(ConfigError):
    """What the run would log exceeds a limit of Azure ML's tracking server; says which and what to do
    (a ConfigError: `python -m train` ends with one line and exit status 2)."""


# What `log_prepared_data` logs, as data_<count> and data_tokens_<stat>.
DATA_COUNTS = (
    "rows_read",
    "rejected",
    "duplicates_removed",
    "dropped_too_long",
    "truncated_turns",
    "train",
    "test",
)
TOKEN_STATS = ("train", "test", "train_trained", "p50", "p95", "max")
# What transformers' Trainer and TRL's SFTTrainer log: per step, per evaluation and at the end of
# train() (the recipe logs train()'s and evaluate()'s results once more, under the same names).
TRAINER_METRICS = (
    *("loss", "grad_norm", "learning_rate", "epoch", "entropy", "num_tokens", "mean_token_accuracy"),
    *("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"),
    *("eval_entropy", "eval_num_tokens", "eval_mean_token_accuracy"),
    *("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_tokens_per_second"),
    *("total_flos", "train_loss", "num_input_tokens_seen"),
)
RECIPE_METRICS = (
    *("train_wall_seconds", "train_cpu_seconds", "train_loss_first", "train_loss_last"),
    "held_out_rows",  # how many held-out rows exact match and stop rate are measured on
)


class MetricsOnlyMLflowCallback(MLflowCallback):
    """transformers' MLflowCallback minus its unbounded param dump.

    Its `on_log` logs train/eval metrics (loss, learning rate, grad norm, tokens/s) to the
    run the recipe opened; params, the run's lifetime and the model stay with the recipe.
    `setup` is the only place the parent logs params, so it is replaced by the state
    `on_log` needs. A metric name past Azure ML's 50 per run stops with TrackingLimitError
    naming them, where the server would refuse the batch.
    """

    def setup(self, args, state, model):
        self._async_log = True
        self._initialized = True
        active = mlflow.active_run()  # names the run holds already (data_*, or before a resume)
        self._metric_names = set(mlflow.get_run(active.info.run_id).data.metrics) if active else set()

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        if state.is_world_process_zero and mlflow.active_run():
            if not self._initialized:
                self.setup(args, state, model)
            names = self._metric_names | {k for k, v in logs.items() if isinstance(v, int | float)}
            if len(names) > MAX_METRIC_NAMES:
                raise TrackingLimitError(
                    f"the run would log {len(names)} metric names, over Azure ML's limit of {MAX_METRIC_NAMES} "
                    f"per run; new at step {state.global_step}: {sorted(names - self._metric_names)}"
                )
            self._metric_names = names
        super().on_log(args, state, control, logs, model=model, **kwargs)


def tracking_uri(logger_cfg) -> str:
    uri = logger_cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def check_logger_tags(logger_cfg) -> None:
    """`logger.tags` against Azure ML's tag limits, before the run starts."""
    tags = dict(logger_cfg.tags or {})
    if len(tags) > MAX_TAGS - RESERVED_TAGS:
        raise TrackingLimitError(
            f"logger.tags has {len(tags)} tags; with the recipe's own a run may carry {MAX_TAGS} "
            f"(Azure ML's limit), so at most {MAX_TAGS - RESERVED_TAGS} here"
        )
    for key, value in tags.items():
        if len(key) > MAX_TAG_KEY or len(str(value)) > MAX_TAG_VALUE:
            raise TrackingLimitError(
                f"logger.tags.{key}: Azure ML takes tag keys up to {MAX_TAG_KEY} characters and values up to "
                f"{MAX_TAG_VALUE} (this key has {len(key)}, its value {len(str(value))}); log longer text "
                "as an artifact"
            )


def planned_metric_names(cfg: DictConfig) -> set[str]:
    """Every metric name a run of `cfg` logs, from the data's counts to the held-out answers after
    training: counted against Azure ML's limit before the run starts."""
    names = {f"data_{k}" for k in DATA_COUNTS} | {f"data_tokens_{k}" for k in TOKEN_STATS}
    names |= set(TRAINER_METRICS) | set(RECIPE_METRICS)
    if cfg.eval.generate_samples:
        names |= {
            f"{metric}_{when}" for metric in ("exact_match", "stop_rate") for when in ("before", "after")
        }
    return names


def check_run_limits(cfg: DictConfig, sft_defaults: dict, recipe_tags: dict[str, str]) -> dict[str, str]:
    """Everything the run will log against Azure ML's limits, before anything is logged: the params
    (returned, flattened), the configured and the recipe's own tags (the command line's overrides
    among them), and the metric names, those logged after training included."""
    check_logger_tags(cfg.logger)
    params = flatten_params(cfg, sft_defaults)
    for key, value in recipe_tags.items():
        if len(value) > MAX_TAG_VALUE:
            raise TrackingLimitError(
                f"the run's {key} tag would be {len(value)} characters, over Azure ML's {MAX_TAG_VALUE} per tag "
                "value: move the long overrides into a config file (an experiment or profile overlay, "
                "selected with +profile=NAME) so the command line stays short"
            )
    names = planned_metric_names(cfg)
    if len(names) > MAX_METRIC_NAMES:
        raise TrackingLimitError(
            f"the run would log {len(names)} metric names, over Azure ML's limit of {MAX_METRIC_NAMES} per run: "
            f"{sorted(names)}"
        )
    return params


def start_experiment(logger_cfg, artifact_root: Path) -> str:
    """Point MLflow at the configured store and return the experiment id (after checking the
    configured tags, so a run that would be refused stops before it starts)."""
    check_logger_tags(logger_cfg)
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
    method = params["method"] = str(container.get("method", "sft"))
    own = container.get(method) if method != "sft" else None  # dpo.* / kto.*: a few dozen keys
    for key, value in (own or {}).items():
        params[f"{method}.{key}"] = value
    for key, value in container["sft"].items():
        if sft_defaults.get(key, object()) != value:
            params[f"sft.{key}"] = value
    flat = {k: str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}
    if len(flat) > MAX_PARAMS:
        raise TrackingLimitError(
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


RENDERED_ROWS = 32  # held-out conversations whose training ids the parity check renders again


def log_tokenizer_artifacts(tokenizer, out_dir: Path, rendered: list[dict] | None = None) -> None:
    """`tokenizer/`: the chat template, special tokens, fixed template inputs and `rendered.jsonl`,
    real conversations with the ids and labels the trainer received (`rendered_rows`), which the
    parity check renders again with the served tokenizer (deploy/registry/parity.py)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
    special = {
        name: {"token": getattr(tokenizer, name), "id": getattr(tokenizer, f"{name}_id")}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    (out_dir / "special_tokens.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    # What the template was rendered with beyond the messages (Llama 3's date): the logged template
    # carries it, this says so plainly.
    rendering = {"fixed_inputs": fixed_inputs(tokenizer.chat_template)}
    (out_dir / "rendering.json").write_text(json.dumps(rendering, indent=2), encoding="utf-8")
    if rendering["fixed_inputs"]:
        mlflow.set_tag("chat_template_fixed_inputs", json.dumps(rendering["fixed_inputs"]))
    if rendered:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rendered)
        (out_dir / "rendered.jsonl").write_text(lines, encoding="utf-8")
    mlflow.log_artifacts(str(out_dir), artifact_path="tokenizer")


def rendered_rows(prepared_dir: Path, limit: int = RENDERED_ROWS) -> list[dict]:
    """The first `limit` prepared conversations, held-out ones first, each with the `input_ids` and
    `labels` the trainer gets for it (the .tokens.parquet beside the JSON lines)."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for split in ("test", "train"):
        tokens, lines = prepared_dir / f"{split}.tokens.parquet", prepared_dir / f"{split}.jsonl"
        if len(rows) >= limit or not tokens.is_file():
            continue
        with lines.open(encoding="utf-8") as f:
            messages = [json.loads(line)["messages"] for _, line in zip(range(limit - len(rows)), f)]
        ids = pq.read_table(tokens).slice(0, len(messages)).to_pylist()
        rows += [{"messages": m, **row} for m, row in zip(messages, ids)]
    return rows


def log_prepared_data(prepared) -> None:
    """Where the data came from and what preparation kept, dropped and counted (data/ artifacts),
    and the held-out conversations themselves (`data/test.jsonl`): `python -m deploy
    action=evaluate|promote` answers them for any version this run registers."""
    mlflow.set_tag("data_dir", str(prepared.dir))
    mlflow.log_artifact(str(prepared.dir / "stats.json"), artifact_path="data")
    mlflow.log_artifact(str(prepared.dir / "test.jsonl"), artifact_path="data")
    if prepared.stats["rejected"] or prepared.stats["dropped_too_long"]:
        mlflow.log_artifact(str(prepared.dir / "rejects.jsonl"), artifact_path="data")
    # preference data (train.prepare.preference) has no duplicates_removed or truncated_turns
    mlflow.log_metrics({f"data_{k}": prepared.stats[k] for k in DATA_COUNTS if k in prepared.stats})
    mlflow.log_metrics({f"data_tokens_{k}": v for k, v in prepared.stats["tokens"].items()})
    for name, share in prepared.stats.get("mixture", {}).items():  # data.sources: each source's share
        mlflow.log_metrics({f"data_{name}_{k}": share[k] for k in ("rows", "tokens", "trained_tokens")})


def log_chat_model(model, tokenizer, logger_cfg, with_peft: bool, tags: dict[str, str]):
    """Log the model to the active run as an MLflow transformers `llm/v1/chat` model at `model/`,
    register it and tag the version; returns the ModelVersion (None when registration is off).

    Not `mlflow.transformers.log_model`: in MLflow 3 it starts with the logged-models API
    (POST /api/2.0/mlflow/logged-models), which Azure ML's tracking server answers with 404
    (azure-sdk-for-python#44896), as do MLflow 2.x servers, and it stores the model under the logged
    model, not at the run's `model/` folder deploy registers from in a job. `save_model` +
    `log_artifacts` + `register_model("runs:/...")` use only run artifacts and the registry, which
    every server has: the workaround Microsoft gives in #44896, and the registration Azure documents
    (how-to-manage-models-mlflow).
    """
    run_id = mlflow.active_run().info.run_id
    with tempfile.TemporaryDirectory(prefix="finetune-phi-model-") as tmp:
        saved = Path(tmp) / MODEL_ARTIFACT_PATH
        mlflow.transformers.save_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            path=str(saved),
            task="llm/v1/chat",
            pip_requirements=pip_requirements(with_peft),
        )
        mlflow.log_artifacts(str(saved), artifact_path=MODEL_ARTIFACT_PATH)
    if not logger_cfg.registered_model_name:
        return None
    version = mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}", logger_cfg.registered_model_name)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
    return version
