"""Rehearsal against forgetting: the starting model's own answers to general prompts, trained
alongside your data so that what it knew is rehearsed while it learns your task.

    python -m train.rehearsal model=smollm2     # writes train/assets/smollm2_rehearsal.jsonl
    python -m train model=smollm2               # trains with it (the preset sets rehearsal.source)
    python -m train model=smollm2 rehearsal.weight=0 # without it

Why: a narrow fine-tune teaches a habit, not only a task. Trained on the bundled rules ("what kind
of thing is ...", "first word of ..."), SmolLM2 started answering "What is the capital of Austria?"
with "Austria" (docs/real-model.md). Rows of the base model answering general questions in its own
words keep its old behaviour in the training signal (self-distillation replay), at a cost of a few
percent of the budget.

`rehearsal.questions` (one per line, train/assets/rehearsal_questions.txt) are answered greedily
through the model's chat template by the serving code's generator; only answers that end on a stop
token within `rehearsal.max_new_tokens` are kept (a cut answer would teach running on), and so is
no question whose answer holds an accepted answer of an `eval.tasks` regression set, so the set
that measures forgetting is never trained on. The file is ordinary chat data: train/mixture.py adds
it to `data` as one more weighted source (`rehearsal.weight`), with its own held-out rows and
`eval_rehearsal_loss`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from train.config import register_configs
from train.errors import ConfigError, one_line_user_errors

register_configs()
log = logging.getLogger(__name__)


def read_questions(path: Path) -> list[str]:
    """The non-empty lines of `path` (a `#` line is a comment); a missing or empty file is an error."""
    if not path.is_file():
        raise ConfigError(f"rehearsal.questions={path}: no such file (one question per line)")
    questions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    questions = [q for q in questions if q and not q.startswith("#")]
    if not questions:
        raise ConfigError(f"rehearsal.questions={path}: no questions in it (one per line)")
    return questions


def regression_answers(task_paths: list[str]) -> list[list[str]]:
    """The accepted answers of every question of the `eval.tasks` regression sets."""
    from common import generation_tasks

    return [
        accepted
        for path in task_paths
        if generation_tasks.is_generation_task(path)
        for accepted in generation_tasks.load_generation_task(path).answers
    ]


def rehearsal_rows(questions: list[str], answers: list[dict], held_out: list[list[str]]) -> tuple[list, dict]:
    """Chat rows of the answers that stopped and touch no held-out answer; counts of what was left out."""
    from common.generation_tasks import contains

    rows, counts = [], {"asked": len(questions), "did_not_stop": 0, "holds_a_regression_answer": 0}
    for question, answer in zip(questions, answers):
        if answer["finish_reason"] != "stop" or not answer["text"]:
            counts["did_not_stop"] += 1
        elif any(contains(question + " " + answer["text"], accepted) for accepted in held_out):
            counts["holds_a_regression_answer"] += 1
        else:
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer["text"]},
                    ]
                }
            )
    return rows, counts | {"kept": len(rows)}


def write_rehearsal(cfg: DictConfig) -> Path:
    """Answer `rehearsal.questions` with the configured model and write the kept rows to `rehearsal.source`."""
    from train import gguf_model, model, start_model
    from train.evaluate import generate_answers

    if not cfg.rehearsal.source:
        raise ConfigError("rehearsal.source: where to write the rows (a .jsonl path); the presets set it")
    questions = read_questions(Path(cfg.rehearsal.questions))
    held_out = regression_answers(list(cfg.eval.tasks))
    gguf_model.resolve_gguf(cfg.model)
    start_model.resolve_model_uri(cfg)  # model.uri=models:/NAME@champion: its answers, not the base's
    tokenizer = model.load_tokenizer(cfg.model)
    net = model.load_model(cfg.model, cfg.peft, tokenizer).eval()
    log.info("answering %d rehearsal questions with %s", len(questions), cfg.model.name_or_path)
    prompts = [[{"role": "user", "content": q}] for q in questions]
    answers = generate_answers(
        net, tokenizer, prompts, cfg.rehearsal.max_new_tokens, threads=cfg.eval.torch_threads
    )
    rows, counts = rehearsal_rows(questions, answers, held_out)
    if not rows:
        raise ConfigError(
            f"rehearsal: none of {len(questions)} answers by {cfg.model.name_or_path} could be kept "
            f"({json.dumps(counts)}); an untrained model never stops: rehearse a pretrained one, or "
            "raise rehearsal.max_new_tokens"
        )
    out = Path(cfg.rehearsal.source)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"rehearsal: {counts['kept']} rows written to {out} ({json.dumps(counts)})")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
@one_line_user_errors  # a missing questions file or setting: one line on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    write_rehearsal(cfg)


if __name__ == "__main__":
    main()
