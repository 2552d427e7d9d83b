"""transformers' continuous batching behind deploy.serve.batching, in process on the tiny model: batched
answers are generate()'s answers token for token, stop strings, streaming pieces, the bounded
queue, cancellation, and the health signal of a generation step that does not end."""

from __future__ import annotations

import asyncio
import threading

import pytest
from transformers import AutoModelForCausalLM

from common.generation import Generator
from deploy.serve.batching import BatchedGenerator, GenerationFailed, QueueFull
from tests.deploy.conftest import training_tokenizer

PROMPTS = [[{"role": "user", "content": f"Question {i}: " + "more words " * i}] for i in range(8)]
GREEDY = {"max_new_tokens": 12, "do_sample": False}


@pytest.fixture(scope="module")
def generator(registered):
    return Generator(
        AutoModelForCausalLM.from_pretrained(registered.model_dir).eval(),
        training_tokenizer(registered.model_dir),
    )


def run_engine(generator, scenario, **settings):
    """Run `scenario(engine)` on an event loop with a started engine, then stop it."""

    async def main():
        engine = BatchedGenerator(generator, **settings)
        engine.start()
        try:
            return await scenario(engine)
        finally:
            engine.close()

    return asyncio.run(main())


async def pieces_and_answer(job):
    return [piece async for piece in job.deltas()], job.answer


def test_batched_answers_are_generates_answers(generator):
    """Eight prompts of different lengths at once, greedy: generate()'s text, finish reason and
    token counts for each; streamed pieces add up to the same text."""
    expected = generator.answer_batch(PROMPTS, GREEDY, stop=[])

    async def scenario(engine):
        jobs = [
            engine.submit(generator.prompt_ids(p), GREEDY, [], stream=i % 2 == 0)
            for i, p in enumerate(PROMPTS)
        ]
        return await asyncio.gather(*map(pieces_and_answer, jobs))

    results = run_engine(generator, scenario, max_batch=8)
    assert [answer for _, answer in results] == expected
    streamed = [(pieces, answer) for i, (pieces, answer) in enumerate(results) if i % 2 == 0]
    assert all(len(pieces) > 1 and "".join(pieces) == answer["text"] for pieces, answer in streamed)


def test_stop_strings_end_the_answer_as_generate_does(generator):
    full = generator.answer(PROMPTS[3], GREEDY, stop=[])["text"]
    stop = full[4:7]
    expected = generator.answer(PROMPTS[3], GREEDY, stop=[stop])

    async def scenario(engine):
        streamed = engine.submit(generator.prompt_ids(PROMPTS[3]), GREEDY, [stop], stream=True)
        plain = engine.submit(generator.prompt_ids(PROMPTS[3]), GREEDY, [stop])
        return await pieces_and_answer(streamed), await plain.result()

    (pieces, streamed), plain = run_engine(generator, scenario)
    assert streamed == plain == expected and expected["finish_reason"] == "stop"
    assert "".join(pieces) == expected["text"] and stop not in expected["text"]


def test_sampling_follows_each_requests_parameters(generator):
    sampled = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "top_p": 1.0}

    async def scenario(engine):
        ids = generator.prompt_ids(PROMPTS[0])
        jobs = [engine.submit(ids, sampled, []) for _ in range(4)] + [engine.submit(ids, GREEDY, [])]
        return await asyncio.gather(*(job.result() for job in jobs))

    *samples, greedy = run_engine(generator, scenario)
    assert greedy == generator.answer(PROMPTS[0], GREEDY, stop=[])  # unchanged beside sampled requests
    assert len({s["text"] for s in samples}) > 1  # random weights, temperature 1.5: four draws differ
    # 12 tokens, unless a draw hit one of the stop ids (Phi-3.5's three: <|end|>, <|assistant|>, <|endoftext|>)
    assert all(
        (s["finish_reason"], s["usage"]["completion_tokens"]) == ("length", 12)
        or (s["finish_reason"] == "stop" and s["usage"]["completion_tokens"] <= 12)
        for s in samples
    )


def test_the_queue_is_bounded_and_a_cancelled_request_frees_its_slot(generator):
    long = {"max_new_tokens": 400, "do_sample": False}
    steps = []

    async def scenario(engine):
        ids = generator.prompt_ids(PROMPTS[0])
        running, queued = engine.submit(ids, long, [], stream=True), engine.submit(ids, long, [])
        with pytest.raises(QueueFull):
            engine.submit(ids, GREEDY, [])
        assert engine.not_ready_reason(request_timeout_s=60).startswith("the queue is full")
        await anext(running.deltas())  # it is generating
        running.cancel()
        queued.cancel()
        assert engine.not_ready_reason(request_timeout_s=60) is None
        hook = generator.model.register_forward_hook(lambda *_: steps.append(1))
        try:
            return await engine.submit(ids, GREEDY, []).result()
        finally:
            hook.remove()

    answer = run_engine(generator, scenario, max_batch=1, max_queue=1)
    assert answer == generator.answer(PROMPTS[0], GREEDY, [])
    # One sequence at a time: had the cancelled ones gone on, hundreds of steps would come first.
    assert len(steps) < 30  # 12 here: a prefill and 11 decode steps


def test_health_reports_a_generation_step_that_runs_past_the_timeout(generator):
    """A forward pass that does not end (held here by a hook, as a wedged kernel would) makes
    the engine not ready; once it ends, the request is answered and the engine is ready."""
    entered, release = threading.Event(), threading.Event()

    def wedge(*_):
        entered.set()
        release.wait(timeout=60)

    async def scenario(engine):
        hook = generator.model.register_forward_pre_hook(wedge)
        try:
            job = engine.submit(generator.prompt_ids(PROMPTS[0]), GREEDY, [])
            await asyncio.to_thread(entered.wait, 60)
            async with asyncio.timeout(60):
                while (reason := engine.not_ready_reason(request_timeout_s=0.05)) is None:
                    await asyncio.sleep(0.01)
        finally:
            hook.remove()
            release.set()
        answer = await job.result()
        return reason, answer, engine.not_ready_reason(request_timeout_s=0.05)

    reason, answer, after = run_engine(generator, scenario)
    assert reason.startswith("a generation step has run for more than the request timeout (0.05 s)")
    assert answer == generator.answer(PROMPTS[0], GREEDY, [])
    assert after is None


def test_a_generation_loop_that_dies_fails_its_requests_and_is_started_again(generator):
    """A request that gets past validation and still breaks a step (here a temperature the server
    refuses, handed to the engine directly: it overflows sampling and torch.multinomial raises)
    fails with the step's error; the loop is started again, health says ready and the next
    requests are answered as before."""
    poisoned = {"max_new_tokens": 4, "do_sample": True, "temperature": 1e-300, "top_p": 1.0}

    async def scenario(engine):
        ids = generator.prompt_ids(PROMPTS[0])
        with pytest.raises(GenerationFailed, match="probability tensor"):
            await engine.submit(ids, poisoned, []).result()
        ready = engine.not_ready_reason(request_timeout_s=60)
        answers = await asyncio.gather(*(engine.submit(ids, GREEDY, []).result() for _ in range(3)))
        return ready, answers, engine.restarts, engine.reserved

    ready, answers, restarts, reserved = run_engine(generator, scenario)
    assert ready is None and restarts == 1 and reserved == 0
    assert answers == [generator.answer(PROMPTS[0], GREEDY, [])] * 3
