"""Generation tasks: questions asked through the chat template, scored by whether the answer holds
the reference. The regression set that shows forgetting (common/assets/general_knowledge.yaml).

A task is a YAML file in lm-evaluation-harness's layout with `output_type: generate_until` over a
local JSON-lines file (`dataset_path: json`, `dataset_kwargs.data_files`, resolved beside the
YAML): `doc_to_text` and `doc_to_target` name document fields (the target a string, or a list of
accepted answers, the first the reference), `generation_kwargs.max_gen_toks` bounds the answer.
Each question is one user message rendered with the model's own chat template (as lm-eval's
`--apply_chat_template` and as the server does) and answered greedily by `common.generation`.

Its one metric, `contains` (`<task>_contains`), is not one of lm-eval's: an answer counts when a
normalized accepted answer appears in the normalized answer as whole words (lower case,
punctuation and the articles a/an/the dropped, whitespace collapsed: SQuAD's normalization). So a
fine-tune that makes answers shorter ("Paris." for "The capital of France is Paris.") does not
count as forgetting, while a wrong or empty answer does.

Used before and after training (train/recipe.py, `eval.tasks`) and by the promotion gate
(deploy/evaluate/, `eval.tasks`, held to `gate.tasks_tolerance`).
"""

from __future__ import annotations

import json
import re
import statistics
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.generation import Generator

GENERAL_KNOWLEDGE = Path(__file__).parent / "assets" / "general_knowledge.yaml"
METRIC = "contains"
KEYS = {
    "task", "dataset_path", "dataset_kwargs", "test_split", "output_type", "doc_to_text",
    "doc_to_target", "generation_kwargs", "metric_list", "metadata", "description",
}  # fmt: skip
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans(string.punctuation, " " * len(string.punctuation))


class GenerationTaskError(ValueError):
    """A task file that cannot be read as a generation task; the message names the file and key."""


@dataclass(frozen=True)
class GenerationTask:
    name: str
    path: Path
    questions: list[str]
    answers: list[list[str]]  # accepted answers per question, the reference first
    max_new_tokens: int


def normalize(text: str) -> str:
    """Lower case, punctuation and articles dropped, whitespace collapsed; digit groups joined
    ("300,000" and "300000" agree)."""
    text = re.sub(r"(?<=\d)[,.](?=\d{3}\b)", "", text.lower())
    return " ".join(_ARTICLES.sub(" ", text.translate(_PUNCTUATION)).split())


def contains(answer: str, accepted: list[str]) -> bool:
    """Whether one of the accepted answers appears in the answer as whole words, both normalized."""
    padded = f" {normalize(answer)} "
    return any(f" {normalize(a)} " in padded for a in accepted if normalize(a))


def is_generation_task(path: str | Path) -> bool:
    """Whether a task file asks for `output_type: generate_until` (else: lm-eval multiple choice)."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and config.get("output_type") == "generate_until"


def load_generation_task(path: str | Path) -> GenerationTask:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise GenerationTaskError(f"eval.tasks: cannot read {path} ({e.strerror})") from e
    unknown = sorted(set(config) - KEYS)
    if unknown:
        raise GenerationTaskError(
            f"{path}: unsupported key(s) {unknown}; a generation task knows {sorted(KEYS)}"
        )
    metrics = [m.get("metric") for m in config.get("metric_list") or [{"metric": METRIC}]]
    if metrics != [METRIC]:
        raise GenerationTaskError(
            f"{path}: metric_list {metrics}: a generation task is scored by {METRIC!r} only"
        )
    split = config.get("test_split", "test")
    data_file = path.parent / ((config.get("dataset_kwargs") or {}).get("data_files") or {}).get(split, "")
    if config.get("dataset_path") != "json" or not data_file.is_file():
        raise GenerationTaskError(
            f"{path}: dataset_path must be json and dataset_kwargs.data_files.{split} a file beside it ({data_file})"
        )
    questions, answers = [], []
    for number, line in enumerate(data_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            target = doc[config["doc_to_target"]]
            questions.append(str(doc[config["doc_to_text"]]))
        except (ValueError, KeyError) as e:
            raise GenerationTaskError(
                f"{data_file}:{number}: expected a JSON object with the fields doc_to_text "
                f"and doc_to_target name ({type(e).__name__}: {e})"
            ) from e
        answers.append([target] if isinstance(target, str) else [str(t) for t in target])
    if not questions:
        raise GenerationTaskError(f"{data_file}: no documents")
    max_new_tokens = int((config.get("generation_kwargs") or {}).get("max_gen_toks", 48))
    return GenerationTask(config.get("task") or path.stem, path, questions, answers, max_new_tokens)


def evaluate_generation_task(
    model, tokenizer, task: GenerationTask, batch_size: int = 32
) -> tuple[dict[str, float], list[dict]]:
    """`<task>_contains` (the share of answers holding an accepted answer) and a row per question."""
    generator = Generator(model, tokenizer)
    generate = {"max_new_tokens": task.max_new_tokens, "do_sample": False}
    rows = []
    for start in range(0, len(task.questions), batch_size):
        questions = task.questions[start : start + batch_size]
        replies = generator.answer_batch(
            [[{"role": "user", "content": q}] for q in questions], generate, stop=[]
        )
        for question, accepted, reply in zip(questions, task.answers[start:], replies):
            rows.append(
                {
                    "question": question,
                    "reference": accepted[0],
                    "answer": reply["text"],
                    "finish_reason": reply["finish_reason"],
                    METRIC: float(contains(reply["text"], accepted)),
                }
            )
    return {f"{task.name}_{METRIC}": statistics.fmean(r[METRIC] for r in rows)}, rows


def kept(before: list[dict], after: list[dict]) -> float:
    """Of the questions answered right before, the share still answered right after (NaN if none)."""
    right_before = [b["question"] for b in before if b[METRIC]]
    right_after = {a["question"] for a in after if a[METRIC]}
    if not right_before:
        return float("nan")
    return sum(q in right_after for q in right_before) / len(right_before)
