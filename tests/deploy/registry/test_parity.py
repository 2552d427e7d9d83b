"""Training/serving parity: the check passes on what training logged, the real MLflow pyfunc
renders the same ids, and template, EOS or parameter drift stops the deploy with a message."""

from __future__ import annotations

import mlflow
import pytest
from omegaconf import OmegaConf

from deploy.registry import find as registry
from deploy.registry import parity
from deploy.registry.load import load_checked_model
from deploy.scoring.score import ChatModel
from tests.deploy.conftest import log_model, rendered_sample, training_tokenizer


@pytest.fixture(scope="module")
def tracking(registered):
    mlflow.set_tracking_uri(registered.tracking_uri)
    yield registered
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def chat_model(tracking):
    return ChatModel(tracking.uri)


@pytest.fixture(scope="module")
def training(tracking, tmp_path_factory):
    return parity.download_training_tokenizer_info(tracking.run_id, tmp_path_factory.mktemp("tok"))


def deploy_cfg(registered, **model):
    return OmegaConf.create(
        {
            "tracking_uri": registered.tracking_uri,
            "output_root": "unused",
            "parity": {"check": True},
            "model": {
                "name": "tiny-phi3-sft",
                "version": None,
                "alias": None,
                "uri": None,
                "azureml_job": None,
                **model,
            },
        }
    )


def test_check_passes_on_the_model_training_logged(chat_model, training):
    notes = parity.check(chat_model, training)
    assert any("stop at '<|end|>'" in n for n in notes)
    assert any("agree" in n for n in notes)
    assert (
        "8 conversations of the run's data: serving renders the prompt of each of their 8 replies"
        in notes[-2]
    )


def test_mlflow_pyfunc_feeds_the_model_the_ids_training_renders(tracking, chat_model):
    """Through the loaded pyfunc itself: the ids its pipeline hands to generate()."""
    pyfunc = mlflow.pyfunc.load_model(tracking.uri)
    pipeline_model = pyfunc._model_impl.pipeline.model  # MLflow's transformers wrapper
    seen = []
    original = pipeline_model.generate

    def recorder(*args, **kwargs):
        seen.append(kwargs["input_ids"][0].tolist())
        return original(*args, **{**kwargs, "max_new_tokens": 1})

    pipeline_model.generate = recorder
    tokenizer = training_tokenizer(tracking.model_dir)
    for messages in parity.PROBE_CONVERSATIONS:
        pyfunc.predict({"messages": messages, "max_tokens": 1})
        trained = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        assert seen[-1] == trained == chat_model.prompt_ids(messages)


def test_template_drift_blocks_the_deploy(registered, tmp_path):
    """A model logged with a tokenizer whose template differs from the one training used."""
    served = training_tokenizer(registered.model_dir)
    served.chat_template = served.chat_template.replace("<|assistant|>", "<|assistant|> ")
    drifted = log_model(tmp_path, registered.model_dir, name="drifted", served_tokenizer=served)
    mlflow.set_tracking_uri(drifted.tracking_uri)
    try:
        cfg = deploy_cfg(drifted, name="drifted")
        with pytest.raises(
            parity.ParityError,
            match=r"conversation 0 of the run's data, before messages\[2\]: training ids vs serving prompt: "
            "token ids differ at position",
        ):
            load_checked_model(
                registry.resolve(cfg.model, mlflow.MlflowClient(), "unused", False),
                cfg.tracking_uri,
                cfg.parity.check,
            )
    finally:
        mlflow.set_tracking_uri(None)


def test_eos_drift_is_caught(chat_model, training):
    config = chat_model.model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = [chat_model.tokenizer.bos_token_id]
    try:
        with pytest.raises(parity.ParityError, match="answers would run on"):
            parity.check(chat_model, training)
    finally:
        config.eos_token_id = saved


def test_parameter_drift_is_caught(chat_model, training, monkeypatch):
    """A scorer that loses top_p on its way to generate() is caught."""
    full = chat_model.full_kwargs

    def lossy(generate):
        return full({k: v for k, v in generate.items() if k != "top_p"})

    monkeypatch.setattr(chat_model, "full_kwargs", lossy)
    with pytest.raises(parity.ParityError, match=r"model.generate received"):
        parity.check(chat_model, training)


@pytest.mark.gpu
def test_scorer_generates_on_the_gpu_with_the_same_prompt(tracking):
    """On a CUDA machine the scoring model moves to the GPU; rendering is device-independent."""
    on_gpu = ChatModel(tracking.uri)
    assert on_gpu.model.device.type == "cuda"
    answer = on_gpu.answer(parity.PROBE_CONVERSATIONS[0], {"max_new_tokens": 4, "do_sample": False}, stop=[])
    assert answer["usage"]["completion_tokens"] <= 4 and answer["finish_reason"] in ("stop", "length")
    assert (
        on_gpu.prompt_ids(parity.PROBE_CONVERSATIONS[0])
        == training_tokenizer(tracking.model_dir).apply_chat_template(
            parity.PROBE_CONVERSATIONS[0], add_generation_prompt=True, return_dict=True
        )["input_ids"]
    )


def test_a_training_run_that_cannot_be_read_stops_the_deploy_instead_of_skipping_parity(tmp_path, tiny_cache):
    """An auth or network failure reading the training run once became "no training artifacts:
    skipped" and the deploy went on. Here the run's artifacts live on a server that does not
    answer (MLflow 3 keeps the model's own files apart, under its logged model, so it still loads)."""
    import sqlite3

    from deploy.serve.background import free_port
    from tests.conftest import run_module
    from train.tiny_model import ensure_tiny_phi3

    registered = log_model(tmp_path, ensure_tiny_phi3(), name="tiny-unreadable-run")
    unreachable = f"http://127.0.0.1:{free_port()}/api/2.0/mlflow-artifacts/artifacts"
    with sqlite3.connect(registered.tracking_uri.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (unreachable, registered.run_id))
    args = (
        "target=local",
        "model.name=tiny-unreadable-run",
        "model.version=1",
        f"tracking_uri={registered.tracking_uri}",
    )
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_TRACKING_URI": registered.tracking_uri}
    refused = run_module("deploy", *args, f"port={free_port()}", env=env)
    # exit 2: a setup error (the tracking store cannot be read), not a gate refusal
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "tokenizer artifacts could not be read" in refused.stderr
    assert unreachable.split("/api")[0].removeprefix("http://") in refused.stderr  # the cause, named
    assert "parity.check=false" in refused.stderr and "serving" not in refused.stdout


def test_a_system_turn_training_added_and_serving_did_not_is_caught(chat_family):
    """The skew of a blanket empty system turn under ChatML (SmolLM2's template): training rendered
    an empty `<|im_start|>system` block, serving the template's default system prompt."""
    from common.generation import Generator
    from train.prepare import ChatTokenizer

    tokenizer = training_tokenizer(chat_family("smollm2"))
    rows = rendered_sample(tokenizer)
    assert parity.trained_prefix_problems(Generator(None, tokenizer), rows) == []
    empty = {"role": "system", "content": ""}
    added = [r["messages"] if r["messages"][0]["role"] == "system" else [empty, *r["messages"]] for r in rows]
    skewed = [{**r, **vars(e)} for r, e in zip(rows, ChatTokenizer(tokenizer).encode(added))]
    problems = parity.trained_prefix_problems(Generator(None, tokenizer), skewed)
    assert len(problems) == sum(r["messages"][0]["role"] != "system" for r in rows) > 0
    assert "training ids vs serving prompt: token ids differ at position" in problems[0]
