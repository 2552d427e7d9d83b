"""Multiple-choice tasks in lm-evaluation-harness's YAML format, scored as lm-eval 0.4 scores them.

A regression set that catches forgetting: `eval.tasks=[path/to/task.yaml, ...]`, each a task
file as lm-eval reads it (lm_eval/tasks/arc/arc_easy.yaml is the model) over a local JSON-lines
file (`dataset_path: json`, `dataset_kwargs.data_files`, resolved beside the YAML). The
declarative part is read: `doc_to_text`, `doc_to_target`, `doc_to_choice` (a document field or
a Jinja2 template, rendered as lm-eval renders them), `target_delimiter`, `test_split` or
`validation_split`. What only lm-eval itself can run (`!function` hooks, `process_docs`,
few-shot, other output types, hub datasets) is refused naming the file and key, not scored
differently.

Scoring (lm_eval/api/task.py `process_results`, lm_eval/api/model.py `_encode_pair`): each
choice is the continuation `target_delimiter + choice` of the rendered context (trailing spaces
of the context move into it); its tokens are those of encode(context + continuation) after
encode(context)'s; its log-likelihood is the sum of their log-probabilities. `acc`: the gold
choice has the highest log-likelihood; `acc_norm`: the highest per CHARACTER of the choice
(not per token or byte). Ties go to the first choice, as numpy's argmax. Tested against
lm-eval 0.4.13 itself (`HFLM` over the same model and task files,
tests/deploy/evaluate/test_lm_eval_tasks.py): per-choice log-likelihoods within 1e-4 and the
same acc/acc_norm per document on ARC- and HellaSwag-style tasks.

The metrics are `<task>_acc` and `<task>_acc_norm`; the gate holds them to `gate.tasks_tolerance`.
"""

from __future__ import annotations

import ast
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

# What lm-eval's Jinja environment is (lm_eval/utils.py): undefined fields fail, newlines are kept.
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
SUPPORTED_KEYS = {
    "task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "output_type", "training_split",
    "validation_split", "test_split", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
    "metric_list", "metadata", "should_decontaminate", "doc_to_decontamination_query", "num_fewshot",
    "description",
}  # fmt: skip


class TaskError(ValueError):
    """A task file this reader cannot score as lm-eval would; the message names the file and key."""


@dataclass(frozen=True)
class Task:
    name: str
    path: Path
    config: dict
    docs: list[dict]

    def _field(self, key: str, doc: dict):
        spec = self.config[key]
        if not isinstance(spec, str):  # a literal list or index
            return spec
        if spec in doc:  # a document field's name
            return doc[spec]
        try:
            return _JINJA.from_string(spec).render(**doc)
        except jinja2.TemplateError as e:
            raise TaskError(f"{self.path}: {key} {spec!r}: {e} (document keys: {sorted(doc)})") from e

    def context(self, doc: dict) -> str:
        return str(self._field("doc_to_text", doc))

    def choices(self, doc: dict) -> list[str]:
        value = self._field("doc_to_choice", doc)
        value = ast.literal_eval(value) if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
            raise TaskError(
                f"{self.path}: doc_to_choice must give a list of non-empty strings, got {value!r:.80}"
            )
        return value

    def gold(self, doc: dict, choices: list[str]) -> int:
        value = self._field("doc_to_target", doc)
        if isinstance(value, str):
            value = int(value) if value.isdigit() else choices.index(value) if value in choices else None
        if not isinstance(value, int) or not 0 <= value < len(choices):
            raise TaskError(
                f"{self.path}: doc_to_target gave {value!r}, not an index into {len(choices)} choices"
            )
        return value


def load_task(path: str | Path) -> Task:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TaskError(f"eval.tasks: cannot read {path} ({e.strerror})") from e
    except yaml.constructor.ConstructorError as e:  # `!function utils.process_docs`
        raise TaskError(
            f"{path}:{e.problem_mark.line + 1}: {e.problem}: Python hooks run only in lm-eval itself; "
            "ship the processed documents instead"
        ) from e
    if not isinstance(config, dict):
        raise TaskError(f"{path}: not a task (a YAML mapping of lm-eval task keys)")
    unknown = sorted(set(config) - SUPPORTED_KEYS)
    if unknown:
        raise TaskError(f"{path}: unsupported key(s) {unknown}; this reader knows {sorted(SUPPORTED_KEYS)}")
    if config.get("output_type") != "multiple_choice":
        raise TaskError(f"{path}: output_type {config.get('output_type')!r}: only multiple_choice is scored")
    if config.get("num_fewshot"):
        raise TaskError(f"{path}: num_fewshot {config['num_fewshot']}: few-shot contexts are not built here")
    if config.get("dataset_path") != "json":
        raise TaskError(
            f"{path}: dataset_path {config.get('dataset_path')!r}: only local `json` files are read"
        )
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        if key not in config:
            raise TaskError(f"{path}: no {key}")
    split = config.get("test_split") or config.get("validation_split")
    files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
    if not split or split not in files:
        raise TaskError(f"{path}: dataset_kwargs.data_files has no file for the {split!r} split")
    data_file = path.parent / files[split]  # lm-eval resolves it from the cwd; beside the YAML travels better
    try:
        lines = data_file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TaskError(
            f"{path}: dataset_kwargs.data_files.{split}: cannot read {data_file} ({e.strerror})"
        ) from e
    docs = []
    for line_number, line in enumerate(lines, 1):
        if line.strip():
            try:
                docs.append(json.loads(line))
            except ValueError as e:
                raise TaskError(f"{data_file}:{line_number}: not JSON ({e})") from e
    if not docs:
        raise TaskError(f"{data_file}: no documents")
    return Task(config.get("task") or path.stem, path, config, docs)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` for a causal model, with the tokenizer's own special-token default
    (as HFLM.tok_encode when add_bos_token is unset)."""
    if not context:
        raise TaskError("an empty context needs lm-eval's prefix-token rule, which is not read here")
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    import torch

    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids], device=model.device)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, len(context_ids) :]
    return float(logprobs[len(context_ids) - 1 :].gather(1, targets[:, None]).sum())


def score_choices(lls: list[float], choices: list[str], gold: int) -> dict[str, float]:
    def argmax(values: list[float]) -> int:
        return max(range(len(values)), key=values.__getitem__)  # the first maximum

    return {
        "acc": float(argmax(lls) == gold),
        "acc_norm": float(argmax([ll / len(c) for ll, c in zip(lls, choices)]) == gold),
    }


def evaluate_task(model, tokenizer, task: Task) -> tuple[dict[str, float], list[dict]]:
    """`<task>_acc` and `<task>_acc_norm`, and a row per document (context, choices, gold, lls)."""
    delimiter = task.config.get("target_delimiter", " ")
    rows = []
    was_training = model.training
    model.eval()
    try:
        for doc in task.docs:
            context, choices = task.context(doc), task.choices(doc)
            gold = task.gold(doc, choices)
            lls = [loglikelihood(model, tokenizer, context, delimiter + c) for c in choices]
            rows.append(
                {"context": context, "choices": choices, "gold": gold, "lls": lls}
                | score_choices(lls, choices, gold)
            )
    finally:
        model.train(was_training)
    return {f"{task.name}_{m}": statistics.fmean(r[m] for r in rows) for m in ("acc", "acc_norm")}, rows
