"""Structured-config schemas for `conf/train.yaml`, registered in Hydra's ConfigStore.

The YAML files under `conf/` hold the values; these dataclasses hold the keys and types, so
a misspelt key (`model.nmae_or_path=...`, `sft.learning_rat=...`) fails when Hydra composes
the config, naming the key, instead of half-way into a run.

The `sft` schema is not written by hand: it is generated from TRL's own `SFTConfig`
dataclass, so every SFTConfig field of the installed TRL is a valid `sft.<field>` key with
TRL's default, and nothing else is.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from common.azure_workspace import WorkspaceSettings
from common.hydra_schema import refuse_keys_outside_the_schema
from common.paths import PROJECT_ROOT, cache_dir

# Keys the recipe sets itself from `paths` and `logger`; setting them under `sft` would be
# silently overridden, so the schema leaves them out and composition rejects them.
SFT_KEYS_OWNED_BY_RECIPE = ("output_dir", "report_to", "logging_dir", "run_name")


@dataclass
class ModelConfig:
    # Hub id (microsoft/Phi-3.5-mini-instruct) or a local directory with the same layout.
    name_or_path: str = MISSING
    # Short name used in the registered model name and run names.
    short_name: str = MISSING
    revision: str | None = None
    trust_remote_code: bool = False
    # sdpa works everywhere; flash_attention_2 is used instead when installed and asked
    # for with `auto`; eager is what the seed recipe used (slowest, most memory).
    attn_implementation: str = "auto"
    # auto: bfloat16 where the hardware supports it, else float32.
    dtype: str = "auto"
    # Pad token to use when the tokenizer has none, or has one equal to a stop token.
    pad_token: str = "<|pad|>"
    # Insert an empty system turn when a conversation has none (the seed recipe's
    # behaviour; Phi-3's template then renders nothing for it).
    add_empty_system_turn: bool = True


@dataclass
class PeftConfig:
    # none | lora | qlora | dora
    method: str = "none"
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # all-linear: every linear layer except the output head.
    target_modules: Any = "all-linear"
    bias: str = "none"
    use_rslora: bool = False
    # QLoRA only: 4-bit quantisation of the frozen base model.
    load_in_4bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: str = "bfloat16"


@dataclass
class DataConfig:
    # Short name used in logs and MLflow.
    name: str = MISSING
    # A local .jsonl/.json/.parquet/.csv file or a directory of them, or a hub dataset id
    # (or a folder in the hub's layout) read with `split`.
    source: str = MISSING
    # Held-out data (same kinds); with none (and no eval_split), `test_size` of the rows are held out.
    eval_source: str | None = None
    # Where the prepared files go; null: a cache folder named by a hash of the source content
    # and every setting below, so an unchanged dataset is prepared once.
    output_dir: str | None = None
    # messages | sharegpt | alpaca | prompt_completion; null detects the format per row.
    format: str | None = None
    # fail: stop at the first bad row, naming file and line. skip: list it in rejects.jsonl.
    on_error: str = "fail"
    # Drop exact duplicate conversations (counted in stats.json).
    dedupe: bool = False
    # Conversations longer than max_length tokens: truncate (keep the whole turns that fit)
    # or drop. Both are counted in stats.json and listed in rejects.jsonl when dropped.
    max_length: Optional[int] = "${sft.max_length}"  # noqa: UP045 - OmegaConf needs Optional
    length_policy: str = "truncate"
    # Hub datasets: config name and split expressions (`train_sft[:1%]`).
    hub_config: str | None = None
    split: str | None = None
    eval_split: str | None = None
    test_size: float = 0.2
    # Cap on rows used (after the split); null uses all.
    max_train_rows: int | None = None
    max_eval_rows: int | None = None


@dataclass
class EvalConfig:
    # Held-out conversations answered greedily before and after training; exact match of
    # the last assistant turn is logged, and the answers as an MLflow table. 0 disables.
    generate_samples: int = 0
    max_new_tokens: int = 32


@dataclass
class AzureComputeConfig:
    # An AmlCompute cluster, created if missing; an existing one of another size is an error.
    name: str = MISSING
    size: str = MISSING
    # GPUs per node of `size` (0: CPU): checked against the config before anything is created.
    gpus_per_node: int = MISSING
    min_instances: int = 0
    max_instances: int = 1
    idle_time_before_scale_down: int = 120  # seconds
    tier: str = "dedicated"  # dedicated | low_priority (preemptible; the job resumes from checkpoints)
    location: str | None = None  # null: the workspace's region
    # null | system_assigned | a user-assigned identity's resource id (what the nodes run as).
    identity: str | None = None


@dataclass
class AzureEnvironmentConfig:
    name: str = "finetune-phi-train"
    # null: build docker/train.Dockerfile (the pinned stack) in the workspace, versioned by a
    # hash of its content; or an image already pushed, e.g. myacr.azurecr.io/finetune-phi-train:1.
    image: str | None = None


@dataclass
class TargetConfig:
    # local: train in this process. azureml: submit the same config as an Azure ML command job.
    name: str = "local"
    # Azure ML only (conf/target/azureml.yaml):
    workspace: WorkspaceSettings | None = None
    compute: AzureComputeConfig | None = None
    environment: AzureEnvironmentConfig | None = None
    instance_count: int = 1  # nodes; >1 or process_count_per_instance > 1 uses PyTorchDistribution
    process_count_per_instance: int = 1  # processes (GPUs) per node
    # null: the job runs as the compute's identity | user: as you | managed: the compute's managed identity.
    job_identity: str | None = None
    display_name: str | None = None
    dry_run: bool = False  # write the job/compute/environment YAML into the run dir, call nothing
    stream: bool = True  # stream the job's logs until it ends (false: submit and return)


@dataclass
class LoggerConfig:
    # MLFLOW_TRACKING_URI wins when set; otherwise a sqlite file under paths.output_root.
    tracking_uri: str = MISSING
    experiment_name: str = "finetune-phi"
    run_name: str | None = None
    # Log the model as an MLflow transformers chat model (task llm/v1/chat).
    log_model: bool = True
    # Register it under this name (null: log only).
    registered_model_name: str | None = None
    # PEFT runs: merged (adapters folded into the base, servable as is) or adapter.
    peft_save: str = "merged"
    # Extra tags on the run.
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class HardwareConfig:
    # What `estimate=true` compares against and prices (conf/hardware/, sources there).
    name: str = MISSING
    gpus: int = 1
    gpu_memory_gib: float = MISSING
    # Price of the whole machine (all its GPUs); null when it has no public hourly price.
    usd_per_hour: float | None = None
    # Training throughput per GPU, by method (full | lora | qlora; dora counts as lora), for a
    # model of `reference_params` parameters; other sizes scale by reference_params / params.
    tokens_per_second: dict[str, float] = field(default_factory=dict)
    reference_params: float = 3.82e9


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    # Everything a run writes lives below this; runs never share a directory.
    output_root: str = MISSING
    output_dir: str = MISSING
    # Built assets (the tiny model) and prepared data.
    cache_dir: str = MISSING


def _schema_type(tp: Any) -> Any:
    """The closest type OmegaConf can validate; Any where it cannot."""
    if tp in (int, float, bool, str):
        return tp
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float, bool, str):
            return Optional[args[0]]  # noqa: UP045 - built at runtime for OmegaConf
    return Any


def _schema_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if isinstance(value, enum.Enum):
        return value.value
    return value


def sft_schema() -> type:
    """A dataclass with one field per `trl.SFTConfig` field, TRL's default as default."""
    from trl import SFTConfig

    hints = typing.get_type_hints(SFTConfig)
    fields = []
    for f in dataclasses.fields(SFTConfig):
        if not f.init or f.name.startswith("_") or f.name in SFT_KEYS_OWNED_BY_RECIPE:
            continue
        default = _schema_default(f)
        tp = _schema_type(hints.get(f.name, Any))
        if tp is not Any and default is not None and not isinstance(default, typing.get_args(tp) or tp):
            tp = Any
        if isinstance(default, (list, dict)):
            fields.append((f.name, tp, field(default_factory=lambda v=default: v)))
        else:
            fields.append((f.name, tp, field(default=default)))
    return dataclasses.make_dataclass("SFTSchema", fields)


def make_train_schema() -> type:
    SFTSchema = sft_schema()

    @dataclass
    class TrainConfig:
        model: ModelConfig = field(default_factory=ModelConfig)
        data: DataConfig = field(default_factory=DataConfig)
        peft: PeftConfig = field(default_factory=PeftConfig)
        sft: Any = field(default_factory=SFTSchema)
        eval: EvalConfig = field(default_factory=EvalConfig)
        target: TargetConfig = field(default_factory=TargetConfig)
        logger: LoggerConfig = field(default_factory=LoggerConfig)
        paths: PathsConfig = field(default_factory=PathsConfig)
        task_name: str = "train"
        seed: int = 0
        # Set by +profile=NAME; recorded for logs and MLflow tags.
        profile: str | None = None
        # Names the run folder; the same on every rank and on a rerun (train/launch.py).
        run_id: str = MISSING
        # auto: continue from this run folder's newest complete checkpoint | none | PATH.
        resume: str = "auto"
        # Print memory, tokens, time and cost for this config, load no weights, train nothing.
        estimate: bool = False
        hardware: HardwareConfig = field(default_factory=HardwareConfig)
        # accelerate config this profile is meant to be launched with (conf/accelerate/).
        accelerate_config: str | None = None
        # Print N prepared examples as the trainer sees them (trained tokens marked) before
        # training; `python -m train.prepare preview=N` prints them without training.
        preview: int = 0

    return TrainConfig


def _bundled_eval_for(source: str) -> str | None:
    assets = PROJECT_ROOT / "train" / "assets"
    return str(assets / "sample_test.jsonl") if Path(source) == assets / "sample_train.jsonl" else None


def register_configs() -> None:
    """Register the schema as `train_schema`, the first entry of train.yaml's defaults."""
    refuse_keys_outside_the_schema()  # `+sft.learning_rat=1` fails at compose time too
    ConfigStore.instance().store(name="train_schema", node=make_train_schema())
    from train.launch import launch_id, rank_suffix
    from train.tiny_model import ensure_tiny_phi3

    resolvers = {
        # ${project_root:}: this checkout, wherever the command is run from.
        "project_root": lambda: str(PROJECT_ROOT),
        # ${cache_dir:}: $FINETUNE_PHI_CACHE, else ~/.cache/finetune-phi (common/paths.py).
        "cache_dir": lambda: str(cache_dir()),
        # ${tiny_phi3:DIR}: the tiny offline model's directory, built on first use.
        "tiny_phi3": ensure_tiny_phi3,
        # ${bundled_eval_for:SOURCE}: the bundled test set, but only for the bundled training set;
        # with your own data.source it is null, so test_size of your rows are held out instead.
        "bundled_eval_for": _bundled_eval_for,
        # ${launch_id:}: the run folder's name, shared by every rank of a launch.
        "launch_id": launch_id,
        # ${rank_suffix:}: "" on rank 0, ".rank1" etc. elsewhere (one log file per rank).
        "rank_suffix": rank_suffix,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
