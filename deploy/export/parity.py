"""The parity gate: the export answers the version's held-out conversations in its own runtime and
is compared with the MLflow model, token by token and on the evaluation metrics.

Both sides decode greedily from the same prompt ids (the serving code's rendering). The export's
own rendering (its tokenizer and template) must give those ids. Token agreement is measured by
teacher forcing: the export is fed the prompt plus the reference's greedy answer and its argmax is
read at every answer position, so one early near tie costs that position, not the rest of the
answer; at each position that differs, the reference's top-two logit margin says whether it was
a near tie. The export's own free-running greedy answers are scored on the evaluation metrics
beside the reference's. Rules by precision: float32 agrees at every position and answers the
same; 16- and 8-bit formats agree on at least `min_agreement` of the positions and differ only at
near ties (margin below `tie_margin`); 4-bit formats keep each evaluation metric within
`tolerance` of the reference's. LongRoPE models also answer prompts longer than
original_max_position_embeddings (long factors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from deploy.evaluate.answers import answer_row
from deploy.evaluate.cases import Case
from deploy.evaluate.evaluation import Evaluation, score

TIERS = {"fp32": "exact", "f32": "exact", "fp16": "near", "f16": "near", "bf16": "near", "q8_0": "near"}
HIGHER_IS_BETTER = ("exact_match", "token_f1", "rouge_l", "stop_rate")
LOWER_IS_BETTER = ("empty_rate", "error_rate")


def tier(precision: str) -> str:
    """exact | near | quantized (every 4- and 5-bit format)."""
    return TIERS.get(precision, "quantized")


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]
    ids: list[int]
    max_new_tokens: int
    side: str  # "short" / "long" of the LongRoPE switch, or "-"
    case: Case | None = None  # None: a long prompt made for the switch, not scored on metrics


@dataclass
class Parity:
    rows: list[dict]
    reference: Evaluation
    export: Evaluation
    failures: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def gate_prompts(
    chat_model, cases: list[Case], max_new_tokens: int, switch: int | None, long_prompts: int
) -> list[Prompt]:
    """The held-out prompts; for LongRoPE (`switch`), answers stay below the switch and `long_prompts`
    prompts start above it, so no answer crosses it (transformers would change factors mid-answer)."""
    prompts = []
    for case in cases:
        ids = chat_model.checked_prompt_ids(case.messages, max_new_tokens)
        budget = max_new_tokens if switch is None else min(max_new_tokens, switch - len(ids))
        if budget > 0:
            prompts.append(Prompt(case.messages, ids, budget, "-" if switch is None else "short", case))
    for index in range(long_prompts if switch else 0):
        prompts.append(long_prompt(chat_model, cases, index, switch, max_new_tokens))
    return prompts


def long_prompt(chat_model, cases: list[Case], index: int, switch: int, max_new_tokens: int) -> Prompt:
    """A user turn made of the held-out questions, from the `index`-th on, until it passes the switch."""
    questions = [c.messages[-1]["content"] for c in cases]
    words: list[str] = []
    while True:
        words.append(questions[(index + len(words)) % len(questions)])
        messages = [{"role": "user", "content": " ".join(words) + " Repeat the first question."}]
        ids = chat_model.prompt_ids(messages)
        if len(ids) > switch + 8:
            budget = min(max_new_tokens, chat_model.context_tokens - len(ids))
            return Prompt(messages, chat_model.checked_prompt_ids(messages, budget), budget, "long")


def reference_answer(chat_model, prompt: Prompt) -> tuple[list[int], list[float]]:
    """The MLflow model's greedy tokens and, at each, the margin between its two highest logits."""
    import torch

    with torch.no_grad():
        out = chat_model.model.generate(
            input_ids=torch.tensor([prompt.ids]),
            attention_mask=torch.ones(1, len(prompt.ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=prompt.max_new_tokens,
            eos_token_id=chat_model.eos_token_ids,
            pad_token_id=chat_model.tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt.ids) :].tolist()
    margins = [float(top[0] - top[1]) for top in (step[0].float().topk(2).values for step in out.logits)]
    return tokens, margins


def compare(reference: list[int], margins: list[float], forced: list[int], exported: list[int]) -> dict:
    """The export's argmax at each reference position (teacher forced) against the reference's tokens,
    each differing position with the reference's margin there; and whether the free-running greedy
    answers are the same, and where they first part."""
    divergences = [[i, round(margins[i], 4)] for i, (a, b) in enumerate(zip(reference, forced)) if a != b]
    parted = next((i for i, (a, b) in enumerate(zip(reference, exported)) if a != b), None)
    if parted is None and len(reference) != len(exported):
        parted = min(len(reference), len(exported))
    return {
        "reference_tokens": len(reference),
        "agreed_tokens": len(reference) - len(divergences),
        "divergences": divergences,  # [position, reference's top-two margin]
        "answer_same": parted is None,
        "answer_parted_at": parted,
    }


def answer_both(chat_model, runtime, prompt: Prompt) -> dict:
    """One prompt answered by both sides, compared; the answers decoded as the servers decode them."""
    stops = set(chat_model.eos_token_ids)
    started = time.perf_counter()
    reference, margins = reference_answer(chat_model, prompt)
    reference_latency = time.perf_counter() - started
    started = time.perf_counter()
    exported = runtime.greedy(prompt.ids, prompt.max_new_tokens, stops)
    latency = time.perf_counter() - started
    forced = runtime.forced_argmax(prompt.ids, reference, prompt.max_new_tokens)
    rendered = runtime.render_ids(prompt.messages)
    return {
        "side": prompt.side,
        "prompt_tokens": len(prompt.ids),
        "rendered_same": rendered == prompt.ids,
        **compare(reference, margins, forced, exported),
        "reference": chat_model.decode_answer(prompt.ids, reference, []),
        "export": chat_model.decode_answer(prompt.ids, exported, []),
        "latency_s": latency,
        "reference_latency_s": reference_latency,
    }


def run_gate(chat_model, runtime, prompts: list[Prompt], precision: str, settings) -> Parity:
    """Every prompt answered by both sides; the rules of `precision`'s tier decide."""
    rows = [answer_both(chat_model, runtime, p) for p in prompts]
    scored = [(p, r) for p, r in zip(prompts, rows) if p.case is not None]
    reference = score(
        "reference", [answer_row(p.case, r["reference"], r["reference_latency_s"]) for p, r in scored]
    )
    export = score(precision, [answer_row(p.case, r["export"], r["latency_s"]) for p, r in scored])
    parity = Parity(rows, reference, export)
    parity.summary = summarize(rows, precision, settings.tie_margin)
    parity.failures = verdict(parity, rows, settings)
    return parity


def summarize(rows: list[dict], precision: str, tie_margin: float) -> dict:
    total = sum(r["reference_tokens"] for r in rows)
    agreed = sum(r["agreed_tokens"] for r in rows)
    margins = [margin for r in rows for _, margin in r["divergences"]]
    return {
        "tier": tier(precision),
        "agreement": agreed / total if total else 1.0,
        "agreed_tokens": agreed,
        "reference_tokens": total,
        "diverged_tokens": len(margins),
        "near_tie_divergences": sum(m < tie_margin for m in margins),
        "diverged_answers": sum(not r["answer_same"] for r in rows),
        "answers": len(rows),
        "long_prompts": sum(r["side"] == "long" for r in rows),
    }


def verdict(parity: Parity, rows: list[dict], settings) -> list[str]:
    """Why the export is refused (empty: it passes)."""
    summary, failures = parity.summary, []
    misrendered = sum(not r["rendered_same"] for r in rows)
    if misrendered:
        failures.append(
            f"the export's tokenizer and template render {misrendered} prompts to other ids than training's"
        )
    if summary["tier"] == "exact" and (summary["diverged_tokens"] or summary["diverged_answers"]):
        failures.append(
            f"float32 must agree token for token: {summary['diverged_tokens']} positions differ, "
            f"{summary['diverged_answers']} greedy answers differ"
        )
    if summary["tier"] == "near":
        if summary["agreement"] < settings.min_agreement:
            failures.append(f"token agreement {summary['agreement']:.4f} < {settings.min_agreement}")
        clear = summary["diverged_tokens"] - summary["near_tie_divergences"]
        if clear:
            failures.append(
                f"{clear} positions differ where the reference's top-two logits differ by >= {settings.tie_margin}"
            )
    if summary["tier"] == "quantized":
        failures += metric_failures(parity.reference.metrics, parity.export.metrics, settings.tolerance)
    return failures


def metric_failures(reference: dict, export: dict, tolerance) -> list[str]:
    failures = []
    for name, allowed in tolerance.items():
        if allowed is None or name not in reference:
            continue
        loss = reference[name] - export[name] if name in HIGHER_IS_BETTER else export[name] - reference[name]
        if loss > allowed:
            failures.append(
                f"{name} {export[name]:.3f} vs the MLflow model's {reference[name]:.3f} (tolerance {allowed})"
            )
    return failures


def parity_table(parity: Parity) -> str:
    """The metrics side by side, the agreement, and the verdict."""
    s = parity.summary
    lines = [f"{'metric':<22} {'MLflow model':>12} {parity.export.label:>12} {'delta':>8}"]
    for name, ref in parity.reference.metrics.items():
        exp = parity.export.metrics.get(name, float("nan"))
        lines.append(f"{name:<22} {ref:>12.3f} {exp:>12.3f} {exp - ref:>+8.3f}")
    lines.append(
        f"greedy tokens agreed   {s['agreed_tokens']}/{s['reference_tokens']} ({s['agreement']:.4f}, teacher forced); "
        f"{s['diverged_tokens']} positions differ, {s['near_tie_divergences']} at near ties; "
        f"{s['diverged_answers']} of {s['answers']} greedy answers differ; "
        f"{s['long_prompts']} prompts past the LongRoPE switch"
    )
    lines += [f"REFUSED: {f}" for f in parity.failures] or [f"PASSED ({s['tier']} rules)"]
    return "\n".join(lines)
