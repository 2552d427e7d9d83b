"""The regression set's scoring: an answer counts when it holds an accepted answer as whole words."""

from __future__ import annotations

import json

import pytest

from common.generation_tasks import (
    GENERAL_KNOWLEDGE,
    GenerationTaskError,
    contains,
    kept,
    load_generation_task,
)


@pytest.mark.parametrize(
    "answer,accepted,expected",
    [
        ("The capital of France is Paris.", ["Paris"], True),  # a longer answer still holds it
        ("paris", ["Paris"], True),
        ("Lyon.", ["Paris"], False),
        ("There are 14 days.", ["4"], False),  # whole words: 4 is not in 14
        ("It is about 300000 km/s.", ["300,000"], True),
        ("The Blue Whale.", ["blue whale"], True),
        ("", ["Paris"], False),
        ("A spider has 8 legs.", ["eight", "8"], True),
    ],
)
def test_an_answer_counts_when_it_holds_an_accepted_answer(answer, accepted, expected):
    assert contains(answer, accepted) is expected


def test_kept_is_the_share_of_right_answers_still_right():
    before = [{"question": q, "contains": c} for q, c in [("a", 1.0), ("b", 1.0), ("c", 0.0), ("d", 1.0)]]
    after = [{"question": q, "contains": c} for q, c in [("a", 1.0), ("b", 0.0), ("c", 1.0), ("d", 1.0)]]
    assert kept(before, after) == pytest.approx(2 / 3)  # c, wrong before, does not count


def test_the_bundled_regression_set_has_at_least_100_distinct_questions():
    task = load_generation_task(GENERAL_KNOWLEDGE)
    assert len(set(task.questions)) == len(task.questions) >= 100
    assert all(answers and all(a.strip() for a in answers) for answers in task.answers)


def test_a_row_without_the_target_field_names_file_and_line(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"question": "q?", "answers": ["a"]}) + "\n{}\n")
    (tmp_path / "t.yaml").write_text(
        "dataset_path: json\ndataset_kwargs: {data_files: {test: t.jsonl}}\noutput_type: generate_until\n"
        "doc_to_text: question\ndoc_to_target: answers\n"
    )
    with pytest.raises(GenerationTaskError, match=r"t\.jsonl:2: "):
        load_generation_task(tmp_path / "t.yaml")
