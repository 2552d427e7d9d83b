"""The preference set docs/preference-tuning.md proves DPO with on SmolLM2-135M-Instruct.

    python -m bench.dpo_short_answers   # asks the base model; rewrites bench/dpo_short_answers_{train,held_out}.jsonl
    python -m bench.dpo_short_answers --score RUN_ID --tracking-uri sqlite:///outputs/mlflow.db
                                        # a DPO run's held-out answers before/after, by kind

The questions are the general-knowledge ones the base model answers right (common/assets/
general_knowledge.jsonl), each asked `<question> Reply with the answer only.`. The chosen reply is
the preferred kind, checkable by exact match: the bare reference answer, capitalised (`Paris`, `Yen`). The rejected
reply is the base model's own greedy answer (`The capital of France is Paris.`), asked through the
generator the recipe's held-out evaluation uses (`train.evaluate.generate_answers`: the same chat
template and default system prompt), so DPO moves probability away from exactly what greedy decoding
picks before training. (A rejected answer the model never gives, such as a hand-written wrong
sentence, is ranked down without changing any greedy answer; and a preferred kind the model cannot
produce, such as a bare correct sum, which SmolLM2-135M gets right for under a fifth of small
additions, cannot become its greedy answer: both were tried.) Where the base model already gives the
bare answer, the rejected reply is `LONG_ANSWER` (counted in the printed summary).

The held-out questions are what the run's held-out exact match (`exact_match_before|after`: the share
of greedy answers of the preferred kind) and reward accuracy are measured on:
`data.eval_source=bench/dpo_short_answers_held_out.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from common.generation_tasks import GENERAL_KNOWLEDGE

HERE = Path(__file__).parent
INSTRUCTION = " Reply with the answer only."
LONG_ANSWER = "The answer to this question is {answer}, as far as I know."


def questions(held_out: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) rows of the general-knowledge set, split at random with `seed`."""
    path = GENERAL_KNOWLEDGE.with_suffix(".jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[held_out:], rows[:held_out]


def pair_row(question: dict, base_answer: str) -> dict:
    """prompt/chosen/rejected: the bare answer against the base model's own (or LONG_ANSWER)."""
    reference = question["answers"][0]
    chosen = reference[:1].upper() + reference[1:]  # one style for all: `Yen`, `Paris`, `1914`
    rejected = base_answer if base_answer != chosen else LONG_ANSWER.format(answer=chosen)
    return {"prompt": question["question"] + INSTRUCTION, "chosen": chosen, "rejected": rejected}


def base_answers(prompts: list[str], max_new_tokens: int) -> list[str]:
    """SmolLM2-135M-Instruct's greedy answers, loaded and asked as `python -m train model=smollm2` does."""
    from bench.limit import compose
    from train.evaluate import generate_answers
    from train.gguf_model import resolve_gguf
    from train.model import load_model, load_tokenizer

    cfg = compose(["model=smollm2", "peft=none"])
    resolve_gguf(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, cfg.peft, tokenizer)
    chats = [[{"role": "user", "content": p}] for p in prompts]
    answers = generate_answers(model, tokenizer, chats, max_new_tokens, threads=cfg.eval.torch_threads)
    return [a["text"] for a in answers]


def shares(rows: list[dict]) -> dict[str, float]:
    """Of a run's held-out answers: the preferred kind (exactly the bare answer, what the run's exact
    match counts), short ones (three words or fewer), right ones (the answer anywhere in it), stopped."""
    kinds = {
        "preferred": lambda r: r["answer"] == r["reference"],
        "short": lambda r: len(r["answer"].split()) <= 3,
        "right": lambda r: r["reference"].lower() in r["answer"].lower(),
        "stop": lambda r: r["finish_reason"] == "stop",
    }
    return {name: sum(map(kind, rows)) / len(rows) for name, kind in kinds.items()} | {"prompts": len(rows)}


def score_run(run_id: str, tracking_uri: str) -> dict[str, dict[str, float]]:
    """`shares` of the run's eval/answers_before.json and eval/answers.json (the recipe logs both)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    scored = {}
    for when, table in (("before", "answers_before"), ("after", "answers")):
        logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval/{table}.json"))
        scored[when] = shares([dict(zip(logged["columns"], row)) for row in logged["data"]])
    return scored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-out", type=int, default=40, help="held-out questions (the rest train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="of the base model's answers")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the two .jsonl files")
    parser.add_argument("--score", metavar="RUN_ID", help="score this DPO run's held-out answers instead")
    parser.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db", help="with --score")
    args = parser.parse_args(argv)
    if args.score:
        for when, kinds in score_run(args.score, args.tracking_uri).items():
            print(when, "  ".join(f"{k} {v:.0%}" if k != "prompts" else f"of {v}" for k, v in kinds.items()))
        return

    train, held_out = questions(args.held_out, args.seed)
    asked = train + held_out
    answers = base_answers([q["question"] + INSTRUCTION for q in asked], args.max_new_tokens)
    rows = [pair_row(q, a) for q, a in zip(asked, answers)]
    for name, part in (("train", rows[: len(train)]), ("held_out", rows[len(train) :])):
        path = args.out / f"dpo_short_answers_{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        bare = sum(r["rejected"] == LONG_ANSWER.format(answer=r["chosen"]) for r in part)
        print(f"{path}: {len(part)} pairs; the base model already gives the bare answer to {bare}")


if __name__ == "__main__":
    main()
