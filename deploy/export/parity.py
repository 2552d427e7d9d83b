"""The parity gate: the export answers the version's held-out conversations in its own runtime and
is compared with the MLflow model, token by token and on the evaluation metrics.

Both sides decode greedily from the same prompt ids (the serving code's rendering). The export's
own rendering (its tokenizer and template) must give those ids. Per answer, the tokens agree up to
the first divergence; there the reference's top-two logit margin says whether it was a near tie.
Rules by precision: float32 agrees token for token; 16- and 8-bit formats agree on at least
`min_agreement` of the reference's greedy tokens and diverge only at near ties (margin below
`tie_margin`); 4-bit formats keep each evaluation metric within `tolerance` of the reference's.
LongRoPE models also answer prompts longer than original_max_position_embeddings (long factors).
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


def compare(reference: list[int], margins: list[float], exported: list[int]) -> dict:
    """Tokens agreed before the first divergence, where it was, and the reference's margin there."""
    agreed = next(
        (i for i, (a, b) in enumerate(zip(reference, exported)) if a != b), min(len(reference), len(exported))
    )
    same = reference == exported
    return {
        "reference_tokens": len(reference),
        "agreed_tokens": len(reference) if same else agreed,
        "diverged_at": None if same else agreed,
        "margin": None if same or agreed >= len(margins) else round(margins[agreed], 4),
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
    rendered = runtime.render_ids(prompt.messages)
    return {
        "side": prompt.side,
        "prompt_tokens": len(prompt.ids),
        "rendered_same": rendered == prompt.ids,
        **compare(reference, margins, exported),
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
    total = sum(r["reference_tokens"] for r in rows)
    agreed = sum(r["agreed_tokens"] for r in rows)
    parity.summary = {
        "tier": tier(precision),
        "agreement": agreed / total if total else 1.0,
        "agreed_tokens": agreed,
        "reference_tokens": total,
        "diverged_answers": sum(r["diverged_at"] is not None for r in rows),
        "near_tie_divergences": sum(
            r["margin"] is not None and r["margin"] < settings.tie_margin for r in rows
        ),
        "long_prompts": sum(r["side"] == "long" for r in rows),
    }
    parity.failures = verdict(parity, rows, settings)
    return parity


def verdict(parity: Parity, rows: list[dict], settings) -> list[str]:
    """Why the export is refused (empty: it passes)."""
    summary, failures = parity.summary, []
    misrendered = sum(not r["rendered_same"] for r in rows)
    if misrendered:
        failures.append(
            f"the export's tokenizer and template render {misrendered} prompts to other ids than training's"
        )
    if summary["tier"] == "exact" and summary["diverged_answers"]:
        failures.append(f"float32 must agree token for token: {summary['diverged_answers']} answers diverge")
    if summary["tier"] == "near":
        if summary["agreement"] < settings.min_agreement:
            failures.append(f"token agreement {summary['agreement']:.4f} < {settings.min_agreement}")
        clear = summary["diverged_answers"] - summary["near_tie_divergences"]
        if clear:
            failures.append(
                f"{clear} answers diverge where the reference's top-two logits differ by >= {settings.tie_margin}"
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
        f"greedy tokens agreed   {s['agreed_tokens']}/{s['reference_tokens']} ({s['agreement']:.4f}); "
        f"{s['diverged_answers']} answers diverge, {s['near_tie_divergences']} at near ties; "
        f"{s['long_prompts']} prompts past the LongRoPE switch"
    )
    lines += [f"REFUSED: {f}" for f in parity.failures] or [f"PASSED ({s['tier']} rules)"]
    return "\n".join(lines)
