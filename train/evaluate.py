"""Generation-based evaluation: does the model answer held-out prompts better?

Eval loss says the model fits held-out text; this says what a user sees. Each held-out
conversation is cut before its last assistant turn, answered greedily through the chat
template by the serving code's own generator (`common.generation`), and compared with the
reference answer.
"""

from __future__ import annotations

from common.generation import Generator, split_for_generation


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16):
    """Greedy answers to chat prompts, rendered and generated as the endpoint does it."""
    generator = Generator(model, tokenizer)
    generate = {"max_new_tokens": max_new_tokens, "do_sample": False}
    answers: list[dict] = []
    for start in range(0, len(prompts), batch_size):
        answers += generator.answer_batch(prompts[start : start + batch_size], generate, stop=[])
    return [a["text"] for a in answers]


def exact_match_eval(model, tokenizer, conversations, n: int, max_new_tokens: int):
    """Exact match of greedy answers on the first `n` held-out conversations.

    Returns (score in [0, 1], rows of prompt/reference/answer for an MLflow table).
    """
    pairs = [p for p in (split_for_generation(c) for c in conversations[:n]) if p]
    if not pairs:
        return 0.0, []
    prompts, references = zip(*pairs)
    answers = generate_answers(model, tokenizer, list(prompts), max_new_tokens)
    rows = [
        {"prompt": p[-1]["content"], "reference": r, "answer": a}
        for p, r, a in zip(prompts, references, answers)
    ]
    score = sum(r["answer"] == r["reference"].strip() for r in rows) / len(rows)
    return score, rows
