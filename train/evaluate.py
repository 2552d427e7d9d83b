"""Generation-based evaluation: does the model answer held-out prompts better?

Eval loss says the model fits held-out text; this says what a user sees. Each held-out
conversation is cut before its last assistant turn, answered greedily through the chat
template by the serving code's own generator (`common.generation`), and compared with the
reference answer; whether each answer ended on a stop token says whether the model learnt to stop.
"""

from __future__ import annotations

from common import generation_tasks
from common.generation import Generator, split_for_generation, torch_threads


def generate_answers(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 16,
    threads: int | None = 1,
):
    """Greedy answers to chat prompts, rendered and generated as the endpoint does it: per prompt
    `text`, `finish_reason` (stop: it ended on a stop token; length: max_new_tokens cut it) and `usage`.
    On a CPU with `threads` torch threads (`eval.torch_threads`), as the local server generates."""
    generator = Generator(model, tokenizer)
    generate = {"max_new_tokens": max_new_tokens, "do_sample": False}
    answers: list[dict] = []
    with torch_threads(model, threads):
        for start in range(0, len(prompts), batch_size):
            answers += generator.answer_batch(prompts[start : start + batch_size], generate, stop=[])
    return answers


def exact_match_eval(model, tokenizer, conversations, n: int, max_new_tokens: int, threads: int | None = 1):
    """Exact match of greedy answers on the first `n` held-out conversations, and the share of
    answers that end on a stop token rather than at max_new_tokens (a model that has not learnt
    to stop runs on to the limit).

    Returns ({"exact_match": ..., "stop_rate": ...} in [0, 1], rows of prompt/reference/answer/
    finish_reason for an MLflow table).
    """
    pairs = [p for p in (split_for_generation(c) for c in conversations[:n]) if p]
    if not pairs:
        return {"exact_match": 0.0, "stop_rate": 0.0}, []
    prompts, references = zip(*pairs)
    answers = generate_answers(model, tokenizer, list(prompts), max_new_tokens, threads=threads)
    rows = [
        {"prompt": p[-1]["content"], "reference": r, "answer": a["text"], "finish_reason": a["finish_reason"]}
        for p, r, a in zip(prompts, references, answers)
    ]
    exact = sum(r["answer"] == r["reference"].strip() for r in rows) / len(rows)
    stopped = sum(r["finish_reason"] == "stop" for r in rows) / len(rows)
    return {"exact_match": exact, "stop_rate": stopped, "held_out_rows": len(rows)}, rows


def ask_tasks(model, tokenizer, paths: list[str]) -> dict[str, list[dict]]:
    """Each generation task's answers (common/generation_tasks.py), by task name."""
    tasks = [generation_tasks.load_generation_task(path) for path in paths]  # a bad file fails first
    return {task.name: generation_tasks.evaluate_generation_task(model, tokenizer, task)[1] for task in tasks}


def task_metrics(before: dict[str, list[dict]], after: dict[str, list[dict]]) -> dict[str, float]:
    """Per task: `<task>_contains_before`/`_after`, `<task>_kept` (of the right answers before, the
    share right after) and `<task>_questions`, from `ask_tasks`' rows keyed `<task>_<when>`."""
    metrics: dict[str, float] = {}
    for key, rows in (before | after).items():
        task = key.rsplit("_", 1)[0]
        metrics[f"{task}_contains_{key.rsplit('_', 1)[1]}"] = sum(r["contains"] for r in rows) / len(rows)
        metrics[f"{task}_questions"] = len(rows)
    for key, rows in before.items():
        task = key.removesuffix("_before")
        if f"{task}_after" in after:
            metrics[f"{task}_kept"] = generation_tasks.kept(rows, after[f"{task}_after"])
    return metrics
