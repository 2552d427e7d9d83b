"""The shipped DPO preference set (bench/dpo_short_answers_*.jsonl): the chosen reply is the bare
answer to a question of the general-knowledge set, the rejected one is not of that kind, and no
held-out question is trained on."""

from __future__ import annotations

import json

from bench import dpo_short_answers as sets


def _rows(name: str) -> list[dict]:
    path = sets.HERE / f"dpo_short_answers_{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_chosen_reply_is_the_bare_reference_answer_and_the_rejected_is_not():
    train, held_out = sets.questions(held_out=40, seed=0)
    for name, asked in (("train", train), ("held_out", held_out)):
        rows = _rows(name)
        assert [r["prompt"] for r in rows] == [q["question"] + sets.INSTRUCTION for q in asked]
        for row, question in zip(rows, asked):
            assert row["chosen"].lower() == question["answers"][0].lower()
            assert row["rejected"] != row["chosen"] and row["rejected"].strip()


def test_no_held_out_question_is_trained_on():
    trained = {r["prompt"] for r in _rows("train")}
    held_out = [r["prompt"] for r in _rows("held_out")]
    assert len(held_out) == 40 and not trained.intersection(held_out)


def test_a_base_answer_already_bare_is_replaced_by_a_long_one():
    question = {"question": "What is the capital of France?", "answers": ["Paris"]}
    assert sets.pair_row(question, "Paris")["rejected"] == sets.LONG_ANSWER.format(answer="Paris")
    assert sets.pair_row(question, "The capital of France is Paris.")["rejected"].startswith("The capital")
