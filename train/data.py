"""The training side of data preparation: prepare `cfg.data` once, then load what the trainer needs.

Every source, local or hub, goes through `train.prepare` before the model loads: a bad row
stops the run named by file and line, long conversations meet the length policy, and the rows
are tokenized in batches exactly as TRL would (ids and loss labels). The result is cached in a
folder named by a hash of the source's content and every setting that changes the output, so
an unchanged dataset is prepared once and a changed file is never served stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from datasets import Dataset, DatasetDict, concatenate_datasets
from omegaconf import DictConfig

from train import lengths
from train.config import Objective, is_bundled_sample
from train.errors import ConfigError
from train.prepare import ChatTokenizer, DataError, Source, prepare
from train.prepare.preference import prepare_preferences

log = logging.getLogger(__name__)

# Bump when the prepared files' layout or content rules change: old cache entries then miss.
PREPARE_VERSION = 4  # 4: preference stats give tokens p95/max; 3: special-token text refused, ...
MANIFEST = "manifest.json"  # written last: a folder without it is incomplete
MARKER = ".finetune-phi-prepared"  # written first: this folder holds a preparation and nothing else
MARKER_TEXT = "prepared by finetune-phi (train.prepare); safe to delete\n"
# Every file a preparation writes; only these are ever replaced in an earlier preparation's folder.
OUTPUT_FILES = frozenset(
    {
        MARKER,
        MANIFEST,
        "stats.json",
        "rejects.jsonl",
        "train.jsonl",
        "test.jsonl",
        "train.tokens.parquet",
        "test.tokens.parquet",
    }
)


@dataclass(frozen=True)
class PreparedData:
    """A folder with train.jsonl, test.jsonl (+ .tokens.parquet with a tokenizer), stats.json."""

    dir: Path
    stats: dict
    reused: bool  # True when an earlier identical preparation was used as is


def _no_credentials(location: str | None, key: str) -> None:
    # A SAS token or signed URL would be copied into MLflow params, tags, configs and job files.
    query = urlsplit(location).query.lower() if location and "://" in location else ""
    if any(part in query for part in ("sig=", "token", "key=", "secret")):
        raise DataError(
            f"{key}: this URL carries a credential in its query string, which would be logged with the "
            "run. Register the data as an Azure ML data asset (azureml:NAME:VERSION) or use a datastore "
            "URI (azureml://datastores/...), which authenticate with your Azure credential instead."
        )


def sources(data_cfg: DictConfig) -> tuple[Source, Source | None]:
    """The train source and the optional eval source of a `data` config."""
    # The schema types both keys as single strings: a list of paths fails when Hydra composes.
    location, eval_location = data_cfg.source, data_cfg.eval_source
    _no_credentials(location, "data.source")
    _no_credentials(eval_location, "data.eval_source")
    train = Source(location, data_cfg.hub_config, data_cfg.split)
    if eval_location:
        return train, Source(eval_location, data_cfg.hub_config, data_cfg.eval_split)
    if data_cfg.eval_split:
        return train, Source(location, data_cfg.hub_config, data_cfg.eval_split)
    return train, None


def prepare_for(cfg: DictConfig, tokenizer=None) -> PreparedData:
    """Prepare `cfg.data` into `data.output_dir` (or the cache), reusing an identical earlier result.

    With a tokenizer the rows are also tokenized with `cfg.sft.assistant_only_loss`'s mask and
    `data.max_length` (null: the model's context, train.lengths)/`data.length_policy` applied;
    without one (e.g. to upload the files) they are validated, converted and split only.
    """
    data_cfg = cfg.data
    train_source, eval_source = sources(data_cfg)
    opened_train = train_source.open()
    opened_eval = eval_source.open() if eval_source else None
    chat_tokenizer = ChatTokenizer(tokenizer, cfg.sft.assistant_only_loss) if tokenizer is not None else None
    if chat_tokenizer is not None:  # refuse a template that cannot be masked before anything is prepared
        chat_tokenizer.check_template()
    max_length = lengths.preparation_limit(cfg, tokenizer) if chat_tokenizer else None
    settings = {
        "version": PREPARE_VERSION,
        "source": opened_train.fingerprint,
        "eval_source": opened_eval.fingerprint if opened_eval else None,
        "format": data_cfg.format,
        "on_error": data_cfg.on_error,
        "dedupe": data_cfg.dedupe,
        "merge_system_into_first_user": data_cfg.merge_system_into_first_user,
        "max_turns": data_cfg.max_turns,
        "test_size": None if opened_eval else data_cfg.test_size,
        "seed": cfg.seed,
        "tokenizer": chat_tokenizer.fingerprint() if chat_tokenizer else None,
        "max_length": max_length,
        "length_policy": data_cfg.length_policy if chat_tokenizer else None,
    }
    objective = Objective(cfg.get("method", Objective.sft))
    if objective != Objective.sft:  # preference rows (train.prepare.preference)
        settings["objective"] = objective
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    out = (
        Path(data_cfg.output_dir)
        if data_cfg.output_dir
        else Path(cfg.paths.cache_dir) / "prepared" / key[:16]
    )

    manifest = out / MANIFEST
    if (out / MARKER).is_file() and manifest.is_file() and _manifest_key(manifest) == key:
        log.info("data %s: reusing %s (same content and settings)", data_cfg.name, out)
        return PreparedData(out, json.loads((out / "stats.json").read_text(encoding="utf-8")), True)
    if data_cfg.output_dir:
        _claim(out)
    else:  # a cache folder is this project's alone: an older or broken entry is simply replaced
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
    stats = _prepare_rows(cfg, objective, opened_train, opened_eval, out, chat_tokenizer, max_length)
    manifest.write_text(
        json.dumps({"key": key, "settings": settings, "source": opened_train.label}, indent=2) + "\n",
        encoding="utf-8",
    )
    return PreparedData(out, asdict(stats), False)


def _prepare_rows(
    cfg: DictConfig, objective: Objective, opened_train, opened_eval, out: Path, chat_tokenizer, max_length
):
    """Validate, split and write the rows into `out`: preference rows for DPO/KTO, chat rows for SFT."""
    data_cfg = cfg.data
    if objective != Objective.sft:
        return prepare_preferences(
            opened_train,
            out,
            objective=objective,
            on_error=data_cfg.on_error,
            test_size=data_cfg.test_size,
            seed=cfg.seed,
            tokenizer=chat_tokenizer,
            max_length=max_length,
            eval_source=opened_eval,
        )
    return prepare(
        opened_train,
        out,
        format=data_cfg.format,
        on_error=data_cfg.on_error,
        test_size=data_cfg.test_size,
        eval_source=opened_eval,
        seed=cfg.seed,
        dedupe=data_cfg.dedupe,
        merge_system_into_first_user=data_cfg.merge_system_into_first_user,
        max_turns=data_cfg.max_turns,
        tokenizer=chat_tokenizer,
        max_length=max_length,
        length_policy=data_cfg.length_policy,
    )


def _manifest_key(manifest: Path) -> str | None:
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("key")
    except (ValueError, AttributeError):  # not ours, or cut off mid-write
        return None


def _claim(out: Path) -> None:
    """Make the user's `data.output_dir` ready to write: new, empty, or an earlier preparation, whose
    own files alone are replaced. A folder holding anything else is refused, never cleared."""
    if not out.exists():
        out.mkdir(parents=True)
    if not out.is_dir():
        raise DataError(f"data.output_dir={out} is a file; give a directory")
    entries = sorted(p.name for p in out.iterdir())
    ours = (out / MARKER).is_file()
    foreign = [name for name in entries if name not in OUTPUT_FILES]
    if (entries and not ours) or foreign:
        raise DataError(
            f"data.output_dir={out} holds other files ({(foreign or entries)[0]}, ...); prepared data is "
            "only written to a new or empty directory, or over an earlier preparation. Choose another directory."
        )
    (out / MANIFEST).unlink(missing_ok=True)  # incomplete until rewritten at the end
    for name in entries:
        if name != MARKER:
            (out / name).unlink(missing_ok=True)
    (out / MARKER).write_text(MARKER_TEXT, encoding="utf-8")


def _read_messages(path: Path) -> list:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def _split(prepared: PreparedData, name: str) -> Dataset:
    """One split with `messages` (for evaluation) beside `input_ids` and `labels` (for the trainer);
    preference data: its message lists as prepared (TRL tokenizes them with the same template)."""
    if "objective" in prepared.stats:
        return Dataset.from_json(str(prepared.dir / f"{name}.jsonl"))
    tokens = Dataset.from_parquet(str(prepared.dir / f"{name}.tokens.parquet"))
    messages = Dataset.from_dict({"messages": _read_messages(prepared.dir / f"{name}.jsonl")})
    return concatenate_datasets([messages, tokens], axis=1)


def refuse_demo_model_on_own_data(cfg: DictConfig) -> None:
    """The tiny demo model learns nothing from real conversations (its 512-token vocabulary was
    made from the bundled data): stop before anything is prepared, naming the real presets."""
    sources = [s.source for s in cfg.data.get("sources") or []] or [cfg.data.source]  # a mixture's each
    own = [source for source in sources if not is_bundled_sample(source)]
    if not cfg.model.demo_only or not own:
        return
    raise ConfigError(
        f"data.source={own[0]} with the tiny demo model ({cfg.model.short_name}), which "
        "cannot learn real conversations: add model=smollm2 (a CPU), +profile=a100|h100|h200|24gb "
        "(Phi-3.5-mini on a GPU) or model=phi35_mini|phi3_mini_4k; model.demo_only=false trains "
        "the demo model anyway (to try the pipeline)"
    )


def load_splits(cfg: DictConfig, tokenizer) -> tuple[DatasetDict, PreparedData]:
    """Train and test splits, tokenized as the trainer uses them, and where they were prepared.

    In a multi-process run, call it with the main process first (the others then find the cache).
    With `data.sources`, a weighted mixture of them (train.mixture), with `test:<name>` per source.
    """
    from train.mixture import load_mixture, with_rehearsal

    cfg = with_rehearsal(cfg)  # rehearsal.source: one more source, mixed in
    if cfg.data.get("sources"):
        return load_mixture(cfg, tokenizer, load_splits)
    prepared = prepare_for(cfg, tokenizer)
    stats = prepared.stats
    if stats["rejected"] or stats["dropped_too_long"]:
        log.warning(
            "data %s: %d rows rejected and %d dropped as too long; see %s",
            cfg.data.name,
            stats["rejected"],
            stats["dropped_too_long"],
            prepared.dir / "rejects.jsonl",
        )
    train, test = _split(prepared, "train"), _split(prepared, "test")
    if cfg.data.max_train_rows:
        train = train.select(range(min(cfg.data.max_train_rows, len(train))))
    if cfg.data.max_eval_rows:
        test = test.select(range(min(cfg.data.max_eval_rows, len(test))))
    log.info(
        "data %s: %d train, %d test conversations from %s", cfg.data.name, len(train), len(test), prepared.dir
    )
    return DatasetDict(train=train, test=test), prepared


def data_fingerprint(splits: DatasetDict) -> str:
    """A short hash of the exact conversations trained and evaluated on (an MLflow tag)."""
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        for messages in splits[name]["messages"]:
            h.update(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode())
    return h.hexdigest()[:16]
