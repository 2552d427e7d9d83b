"""Training/serving parity: the served model sees what training taught it, and stops where it learned to.

Chat-template drift between training and serving is the most-reported failure of fine-tuning
tools (answers that never stop, a missing `<|assistant|>` tag, a BOS added twice). Before
`python -m deploy` serves or deploys, `check()` compares
- the ids the trainer received for real conversations of the run's data, held-out ones first
  (`tokenizer/rendered.jsonl`, logged by the recipe) with the prompt the serving code renders for
  the same messages before each reply: the training ids must start with exactly that prompt, and
  the loss must start right after it. (A run logged without that file is compared through its
  logged template on probe conversations instead, and the note says so.)
- the same serving prompts with MLflow's own llm/v1/chat rendering (`convert_messages_to_prompt` + the pipeline's
  tokenisation: what `pyfunc.predict` and `mlflow models serve` feed the model),
- the scoring code (`ChatModel`, which renders and generates with `common.generation`),
and compares the prompt token ids, where generation stops (the token that ends an assistant
turn in training must be an EOS id of generation), and the generate() arguments each probe
request maps to, including the ones that actually reach `model.generate`.
Any difference is a ParityError naming the probe and both sides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.generation import end_of_turn_id
from common.payloads import generation_kwargs
from deploy.scoring.score import ChatModel

IGNORE_INDEX = -100  # the label the loss skips (transformers' convention, as in training's ids)

PROBE_CONVERSATIONS = [
    [{"role": "user", "content": "Repeat: red fox"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name the next weekday after Monday."},
    ],
    [
        {"role": "user", "content": "Count the words: one two three"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "And: a b"},
    ],
]
# Request parameters -> the generate() arguments they must become (None: not passed).
PROBE_PARAMS: list[tuple[dict, dict[str, Any]]] = [
    ({}, {"max_new_tokens": 128, "do_sample": False}),
    ({"max_tokens": 7}, {"max_new_tokens": 7, "do_sample": False}),
    ({"max_new_tokens": 5, "temperature": 0.0}, {"max_new_tokens": 5, "do_sample": False}),
    (
        {"max_new_tokens": 9, "temperature": 0.7, "top_p": 0.9},
        {"max_new_tokens": 9, "do_sample": True, "temperature": 0.7, "top_p": 0.9},
    ),
    ({"temperature": 0.5, "do_sample": False}, {"max_new_tokens": 128, "do_sample": False}),
]


class ParityError(RuntimeError):
    """Serving would not match training; the message lists every mismatch."""


def training_tokenizer_info(run_artifacts_dir: str | Path) -> dict:
    """The chat template and special tokens the training run logged (`tokenizer/` artifacts)."""
    root = Path(run_artifacts_dir)
    rendered = root / "rendered.jsonl"
    return {
        "chat_template": (root / "chat_template.jinja").read_text(encoding="utf-8"),
        "special_tokens": json.loads((root / "special_tokens.json").read_text(encoding="utf-8")),
        "rendered": [json.loads(line) for line in rendered.read_text(encoding="utf-8").splitlines()]
        if rendered.is_file()
        else None,
    }


def download_training_tokenizer_info(run_id: str, dst: str | Path) -> dict | None:
    """The logged tokenizer artifacts of `run_id`, or None when the run has none (a run logged by
    another tool). A run that cannot be read (auth, network, a missing run) is a ParityError, never
    a silent skip: the check then compared nothing and the deploy went on."""
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        if not MlflowClient().list_artifacts(run_id, "tokenizer"):
            return None
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="tokenizer", dst_path=str(dst)
        )
    except Exception as e:
        raise ParityError(
            f"parity check: the training run {run_id}'s tokenizer artifacts could not be read "
            f"({type(e).__name__}: {str(e)[:300]}); nothing was served or deployed. Fix access to the tracking "
            "store, or skip the check explicitly with parity.check=false"
        ) from e
    return training_tokenizer_info(path)


def mlflow_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids as MLflow's llm/v1/chat pyfunc produces them: render to text, then tokenise
    without special tokens (transformers' TextGenerationPipeline default)."""
    from mlflow.transformers.llm_inference_utils import convert_messages_to_prompt

    prompt = convert_messages_to_prompt(messages, tokenizer)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def captured_generate_kwargs(chat_model: ChatModel, messages: list[dict], generate: dict) -> dict:
    """The keyword arguments that reach `model.generate` for one request (no generation:
    the model's generate is swapped for a recorder that returns the prompt plus EOS)."""
    import torch

    seen: dict = {}
    model = chat_model.model

    def recorder(input_ids=None, attention_mask=None, **kwargs):
        seen.update(kwargs)
        eos = torch.tensor([[chat_model.eos_token_ids[0]]], device=input_ids.device)
        return torch.cat([input_ids, eos], dim=1)

    model.generate = recorder
    try:
        chat_model.answer(messages, generate, stop=[])
    finally:
        del model.generate  # back to the class's method
    return seen


def check(chat_model: ChatModel, training: dict | None) -> list[str]:
    """Run every comparison; returns notes of what was compared, raises ParityError on a mismatch.

    `training`: `training_tokenizer_info(...)`, or None to skip that side (noted).
    """
    notes: list[str] = []
    if training is None:
        notes.append(
            "no training tokenizer artifacts (tokenizer/) in the run: template compared with MLflow only"
        )
    stop_problem, stop_note = stop_check(chat_model, training)
    problems = [
        *special_token_problems(chat_model.tokenizer, training),
        *rendering_problems(chat_model, training),
        *([stop_problem] if stop_problem else []),
        *parameter_problems(chat_model),
    ]
    if problems:
        raise ParityError("training/serving parity check failed:\n  - " + "\n  - ".join(problems))
    notes.append(stop_note)
    rendered = training.get("rendered") if training else None
    if rendered:
        replies = sum(m["role"] == "assistant" for row in rendered for m in row["messages"])
        notes.append(
            f"{len(rendered)} conversations of the run's data: serving renders the prompt of each of their "
            f"{replies} replies as the ids the trainer received"
        )
    elif training is not None:
        notes.append("the run logged no rendered conversations: served prompts compared with its template")
    notes.append(f"serving prompts agree with MLflow's rendering; {len(PROBE_PARAMS)} parameter sets agree")
    return notes


def special_token_problems(tokenizer, training: dict | None) -> list[str]:
    """Each special token training logged that the served tokenizer names or numbers differently."""
    if training is None:
        return []
    problems = []
    for name, logged in training["special_tokens"].items():
        served = {"token": getattr(tokenizer, name, None), "id": getattr(tokenizer, f"{name}_id", None)}
        if served != logged:
            problems.append(f"special token {name}: training {logged}, serving {served}")
    return problems


def rendering_problems(chat_model: ChatModel, training: dict | None) -> list[str]:
    """Each conversation whose serving prompt ids differ from what the trainer received (or, for a
    run without rendered conversations, from training's template) or from MLflow's rendering."""
    rendered = training.get("rendered") if training else None
    problems = trained_prefix_problems(chat_model, rendered) if rendered else []
    prompts = list(PROBE_CONVERSATIONS)
    for row in rendered or []:
        prompts += [row["messages"][:k] for k, m in enumerate(row["messages"]) if m["role"] == "assistant"]
    tokenizer = chat_model.tokenizer
    for i, messages in enumerate(prompts):
        served = chat_model.prompt_ids(messages)
        if training is not None and not rendered and i < len(PROBE_CONVERSATIONS):
            trained = tokenizer.apply_chat_template(
                messages,
                chat_template=training["chat_template"],
                add_generation_prompt=True,
                return_dict=True,
            )["input_ids"]
            if trained != served:
                problems.append(_diff(f"probe {i}: training template vs serving", trained, served, tokenizer))
        via_mlflow = mlflow_prompt_ids(tokenizer, messages)
        if via_mlflow != served:
            problems.append(
                _diff(f"prompt {i}: MLflow pyfunc rendering vs serving", via_mlflow, served, tokenizer)
            )
    return problems


def trained_prefix_problems(chat_model: ChatModel, rendered: list[dict]) -> list[str]:
    """For each reply of each conversation training logged: the training ids must start with the
    prompt serving renders for the messages before it, and the reply's first token must be trained."""
    problems = []
    for i, row in enumerate(rendered):
        ids, labels = row["input_ids"], row["labels"]
        for k, message in enumerate(row["messages"]):
            if message["role"] != "assistant":
                continue
            served = chat_model.prompt_ids(row["messages"][:k])
            if len(ids) <= len(served) and served[: len(ids)] == ids:
                break  # the row was cut at max_length before this reply: nothing of it was trained
            if ids[: len(served)] != served:
                what = f"conversation {i} of the run's data, before messages[{k}]: training ids vs serving prompt"
                problems.append(_diff(what, ids[: len(served)], served, chat_model.tokenizer))
                break
            if labels[len(served)] == IGNORE_INDEX:
                problems.append(
                    f"conversation {i} of the run's data: the token after the serving prompt for messages[{k}] "
                    f"({chat_model.tokenizer.convert_ids_to_tokens(ids[len(served)])!r}) is not trained: the model "
                    "learnt to answer after a different prompt"
                )
    return problems


def stop_check(chat_model: ChatModel, training: dict | None) -> tuple[str | None, str | None]:
    """(problem, note) about where an answer ends: the token training's template closes an
    assistant turn with must be one generation stops at."""
    tokenizer = chat_model.tokenizer
    messages = PROBE_CONVERSATIONS[0]
    template = training["chat_template"] if training else None
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "parity"}], chat_template=template, return_dict=True
    )["input_ids"]
    prompt = chat_model.prompt_ids(messages)
    end = end_of_turn_id(tokenizer, template)
    if full[: len(prompt)] != prompt:
        return _diff(
            "a training sequence does not start with the serving prompt", full, prompt, tokenizer
        ), None
    if end is None:
        return "training sequences end assistant turns with no special token: generation cannot stop", None
    if end not in chat_model.eos_token_ids:
        return (
            f"training ends assistant turns with {tokenizer.convert_ids_to_tokens(end)!r} (id {end}) "
            f"but generation stops at ids {chat_model.eos_token_ids}: answers would run on; set the model's "
            "generation_config.eos_token_id before logging it"
        ), None
    return None, f"answers stop at {tokenizer.convert_ids_to_tokens(end)!r}, as in training"


def parameter_problems(chat_model: ChatModel) -> list[str]:
    """Each probe request whose parameters map to, or reach `model.generate` as, something else."""
    problems = []
    for params, expected in PROBE_PARAMS:
        mapped, _ = generation_kwargs(params)
        if mapped != expected:
            problems.append(f"params {params}: mapped to {mapped}, expected {expected}")
        reached = captured_generate_kwargs(chat_model, PROBE_CONVERSATIONS[0], mapped)
        sent = {k: reached.get(k) for k in expected}
        if sent != expected or reached.get("eos_token_id") != chat_model.eos_token_ids:
            problems.append(f"params {params}: model.generate received {reached}, expected {expected}")
    return problems


def _diff(what: str, a: list[int], b: list[int], tokenizer) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (
        f"{what}: token ids differ at position {at}: "
        f"{tokenizer.convert_ids_to_tokens(a[at : at + 3])} vs {tokenizer.convert_ids_to_tokens(b[at : at + 3])} "
        f"(lengths {len(a)} and {len(b)})"
    )
