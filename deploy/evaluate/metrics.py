"""What the evaluation gate measures in a set of answers, standard library only.

Per answer, against its reference:
- `exact_match`: equal after stripping outer whitespace (what training's held-out evaluation
  scores), so "Two." vs "two" is a miss;
- `token_f1`: SQuAD v1.1's F1: both texts lower-cased, punctuation and the articles a/an/the
  dropped, whitespace collapsed, then the overlap of the two bags of tokens; both empty is a
  match, one empty is not (SQuAD 2.0's rule);
- `rouge_l`: ROUGE-L F-measure as google-research's `rouge-score` computes it with its defaults
  (lower case, every run of other characters a separator, no stemming; P = LCS/len(answer),
  R = LCS/len(reference)). Equal to rouge-score 0.1.2 on 5,000 random ASCII pairs (within 1e-12:
  tests/deploy/evaluate/test_metrics_and_gate.py runs the package itself); unlike
  it, letters outside ASCII are kept ("Møller" is one token, not "m ller").

Over the set (`summarize`): the means of those three, `stop_rate` (answers that ended on a
stop token rather than at max_tokens), `empty_rate`, `error_rate` (requests that failed: such a
row counts as an empty answer that did not stop, never dropped), `answer_tokens_mean`, and the
latency percentiles `latency_p50_s`/`latency_p95_s` (an answer generated in a batch waited for
its whole batch).
"""

from __future__ import annotations

import re
import statistics
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_NOT_A_WORD = re.compile(r"[\W_]+")


def squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    return float(answer.strip() == reference.strip())


def f_measure(overlap: int, answer_length: int, reference_length: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / answer_length, overlap / reference_length
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, reference: str) -> float:
    predicted, expected = squad_normalize(answer).split(), squad_normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    return f_measure(overlap, len(predicted), len(expected))


def longest_common_subsequence(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    predicted = _NOT_A_WORD.sub(" ", answer.lower()).split()
    expected = _NOT_A_WORD.sub(" ", reference.lower()).split()
    if not predicted or not expected:  # rouge-score: 0 when either side is empty
        return 0.0
    return f_measure(longest_common_subsequence(predicted, expected), len(predicted), len(expected))


ANSWER_METRICS = {"exact_match": exact_match, "token_f1": token_f1, "rouge_l": rouge_l}


def percentile(values: list[float], percent: int) -> float:
    """The inclusive percentile (numpy's default, linear interpolation); one value is its own."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def score_row(row: dict) -> dict:
    """The row with its answer's exact_match, token_f1 and rouge_l added."""
    return row | {name: metric(row["answer"], row["reference"]) for name, metric in ANSWER_METRICS.items()}


def summarize(rows: list[dict]) -> dict[str, float]:
    """The set's metrics from scored rows (`score_row`): answer, finish_reason, answer_tokens,
    latency_s and error (None, or why the request failed) each."""
    if not rows:
        raise ValueError("no answers to summarize")
    latencies = [r["latency_s"] for r in rows if r["error"] is None]
    summary = {name: statistics.fmean(r[name] for r in rows) for name in ANSWER_METRICS}
    summary |= {
        "stop_rate": statistics.fmean(r["finish_reason"] == "stop" for r in rows),
        "empty_rate": statistics.fmean(not r["answer"] for r in rows),
        "error_rate": statistics.fmean(r["error"] is not None for r in rows),
        "answer_tokens_mean": statistics.fmean(r["answer_tokens"] for r in rows),
    }
    if latencies:
        summary |= {"latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95)}
    return summary
