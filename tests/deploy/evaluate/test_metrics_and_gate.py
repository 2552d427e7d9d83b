"""The gate's metrics against hand computations, and its per-metric tolerance rules."""

from __future__ import annotations

import math

import pytest

from deploy.evaluate import gate
from deploy.evaluate.metrics import exact_match, rouge_l, score_row, summarize, token_f1

# (answer, reference, exact match, token F1, ROUGE-L), each worked out by hand.
PAIRS = [
    # identical: everything 1
    ("rabbit", "rabbit", 1.0, 1.0, 1.0),
    # case and punctuation: exact match is strict (0); SQuAD's normalisation makes both [two]: F1 1;
    # ROUGE's tokens are lower-cased words: [two] = [two]: 1
    ("Two.", "two", 0.0, 1.0, 1.0),
    # F1: the articles go: [cat, sat, on, mat] vs [cat, is, on, mat], 3 in common, P = R = 3/4 -> 0.75.
    # ROUGE-L keeps them: [the, cat, sat, on, the, mat] vs [the, cat, is, on, the, mat],
    # LCS the-cat-on-the-mat = 5, P = R = 5/6 -> 0.8333
    ("The cat sat on the mat", "the cat is on the mat", 0.0, 0.75, 0.8333333),
    # order counts for ROUGE-L, not for F1. F1: 3 in common, P = 3/3, R = 3/4 -> 2 * 0.75 / 1.75 = 0.857143.
    # ROUGE-L: LCS 2 (olive, kettle), P = 2/3, R = 2/4 -> 2 * (1/3) / (7/6) = 0.571429
    ("olive rabbit kettle", "rabbit olive kettle lamp", 0.0, 0.8571429, 0.5714286),
    # an empty answer (a model that only ended its turn): 0, 0, 0
    ("", "five", 0.0, 0.0, 0.0),
    # letters outside ASCII are word characters: [kålhoved, æ] vs [kålhoved]: LCS 1, P = 1/2, R = 1 -> 0.666667
    ("Kålhoved, æ!", "kålhoved", 0.0, 0.6666667, 0.6666667),
]


@pytest.mark.parametrize(("answer", "reference", "em", "f1", "rouge"), PAIRS)
def test_each_metric_equals_the_hand_computation(answer, reference, em, f1, rouge):
    assert exact_match(answer, reference) == em
    assert token_f1(answer, reference) == pytest.approx(f1, abs=1e-6)
    assert rouge_l(answer, reference) == pytest.approx(rouge, abs=1e-6)


def row(answer, reference, finish_reason, tokens, latency, error=None):
    return {
        "answer": answer,
        "reference": reference,
        "finish_reason": finish_reason,
        "answer_tokens": tokens,
        "latency_s": latency,
        "error": error,
    }


def test_the_set_s_metrics_equal_the_hand_computation():
    rows = [
        row("rabbit", "rabbit", "stop", 2, 0.1),
        row("Two.", "two", "stop", 3, 0.1),
        row("olive rabbit kettle", "rabbit olive kettle lamp", "length", 32, 0.4),
        row("", "five", "error", 0, None, error="503 upstream request timeout"),  # a failed request
    ]
    summary = summarize([score_row(r) for r in rows])
    assert summary == pytest.approx(
        {
            "exact_match": 1 / 4,  # only "rabbit"
            "token_f1": (1 + 1 + 6 / 7 + 0) / 4,  # = 5/7 = 0.714286
            "rouge_l": (1 + 1 + 4 / 7 + 0) / 4,  # = 9/14 = 0.642857
            "stop_rate": 2 / 4,  # the cut one and the failed one did not stop
            "empty_rate": 1 / 4,
            "error_rate": 1 / 4,
            "answer_tokens_mean": (2 + 3 + 32 + 0) / 4,  # 9.25
            # latencies of the answered rows [0.1, 0.1, 0.4]: the median 0.1; the 95th percentile
            # sits at position 0.95 * (3 - 1) = 1.9, between 0.1 and 0.4: 0.1 + 0.9 * 0.3 = 0.37
            "latency_p50_s": 0.1,
            "latency_p95_s": 0.37,
        }
    )


TOLERANCE = {"exact_match": 0.02, "empty_rate": 0.02, "judge": 0.05, "answer_tokens_mean": None}


def verdicts(comparison: gate.Comparison) -> dict[str, bool | None]:
    return {v.metric: v.passed for v in comparison.verdicts}


def test_within_tolerance_or_better_passes_in_either_direction():
    champion = {"exact_match": 0.30, "empty_rate": 0.10, "answer_tokens_mean": 3.0}
    candidate = {"exact_match": 0.285, "empty_rate": 0.115, "answer_tokens_mean": 90.0}
    comparison = gate.compare(candidate, champion, TOLERANCE)
    # 0.015 worse and 0.015 more empty: both within 0.02; answer length is only reported
    assert verdicts(comparison) == {"exact_match": True, "empty_rate": True, "answer_tokens_mean": None}
    assert comparison.passed


def test_worse_than_tolerance_fails_naming_the_metric():
    champion = {"exact_match": 0.30, "empty_rate": 0.10}
    candidate = {"exact_match": 0.40, "empty_rate": 0.13}  # better exact match, 0.03 more empty answers
    comparison = gate.compare(
        candidate, champion, TOLERANCE, candidate_label="v2", baseline_label="v1 @champion"
    )
    assert not comparison.passed and comparison.failed == ["empty_rate"]
    table = comparison.table()
    assert "v2" in table.splitlines()[0] and "v1 @champion" in table.splitlines()[0]
    assert "FAIL (worse by 0.030; tolerance 0.02)" in table
    assert "ok (better by 0.100; tolerance 0.02)" in table


def test_a_gated_metric_that_was_not_measured_fails():
    champion = {"exact_match": 0.3, "judge": 0.8}
    candidate = {"exact_match": 0.3, "judge": math.nan}  # the judge answered nothing usable
    comparison = gate.compare(candidate, champion, TOLERANCE)
    assert comparison.failed == ["judge"]
    assert "not measured" in comparison.table()
    # missing on the other side fails too
    assert gate.compare({"exact_match": 0.3}, champion, TOLERANCE).failed == ["judge"]


def test_without_a_baseline_it_passes_unless_a_gated_metric_was_not_measured():
    assert gate.compare({"exact_match": 0.0, "empty_rate": 1.0}, None, TOLERANCE).passed
    assert gate.compare({"exact_match": 0.2, "judge": math.nan}, None, TOLERANCE).failed == ["judge"]


def test_task_metrics_take_the_tasks_tolerance_unless_named():
    champion = {"words_arc_acc": 0.8, "words_arc_acc_norm": 0.8}
    candidate = {"words_arc_acc": 0.7, "words_arc_acc_norm": 0.7}
    assert gate.compare(candidate, champion, {}, tasks_tolerance=0.15).passed
    assert gate.compare(candidate, champion, {}, tasks_tolerance=0.05).failed == [
        "words_arc_acc",
        "words_arc_acc_norm",
    ]
    named = gate.compare(candidate, champion, {"words_arc_acc": None}, tasks_tolerance=0.05)
    assert named.failed == ["words_arc_acc_norm"]


def test_a_tolerance_on_a_metric_without_a_better_direction_is_refused():
    with pytest.raises(gate.GateError, match=r"gate.tolerance.answer_tokens_mean=5.*no better direction"):
        gate.compare({"answer_tokens_mean": 3.0}, {"answer_tokens_mean": 3.0}, {"answer_tokens_mean": 5})


def test_rouge_l_equals_rouge_score_on_5000_random_ascii_pairs():
    """The claim in deploy/evaluate/metrics.py, against google-research's `rouge-score` itself
    (its defaults: lower case, non-alphanumerics as separators, no stemming)."""
    import random

    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(0)
    words = ["the", "Cat", "sat", "on", "mat", "kettle", "plum", "x_y", "42", "don't", "e-mail", "A"]
    separators = [" ", "  ", ", ", ". ", "!", "\n", "-", "_", "/"]

    def text() -> str:
        return "".join(rng.choice(words) + rng.choice(separators) for _ in range(rng.randint(0, 12)))

    for _ in range(5000):
        answer, reference = text(), text()
        expected = scorer.score(reference, answer)["rougeL"].fmeasure  # score(target, prediction)
        assert rouge_l(answer, reference) == pytest.approx(expected, abs=1e-12), (answer, reference)
