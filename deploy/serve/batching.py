"""Batched generation for the local server: transformers' continuous batching behind a small adapter.

transformers 5's `ContinuousBatchingManager` (`model.init_continuous_batching`) runs one
background thread that schedules every request in flight over a paged KV cache: a new request
joins the running batch at the next step, a finished one leaves it and is answered at once, and
nothing is padded. `BatchedGenerator` puts it behind the server's needs (each point measured on
transformers 5.23, see the README's serving section):

- sampling per request: the manager samples or not as a whole (one `do_sample`), so it samples
  and a greedy request asks for `top_k=1`, the argmax: token for token what
  `generate(do_sample=False)` answers. Per-request temperature/top_p/top_k need
  `per_request_processors` and their warpers present when the manager is made (a generation
  config with temperature != 1, top_p < 1 and top_k set), and exactly floats/ints;
- stop strings: the manager stops at EOS and max_new_tokens only, so such a request streams,
  its text is searched, and a hit cancels it;
- `cancel_request()` drops a request without a last output, so whoever cancels (a stop string,
  the deadline, a client that went away) answers the caller here;
- a bound on the work in flight, counted in slots (`max_batch + max_queue` of them; `QueueFull`:
  the server answers 503), since the manager's own bounded queue blocks the caller for 10 s when
  full. A job takes one slot, or runs within the `Slots` its request reserved (a /score request
  with many prompts runs them a few at a time within its share, deploy/serve/serving.py);
- a generation loop that dies (an exception in a step fails every request in flight and stops
  the manager's thread) is started again before the next request or health probe: the failure
  reaches the requests it touched (500), and everyone after is served;
- the KV cache sized from a memory budget (`server.kv_cache_mib`; `KVCacheBudget`), never
  max batch x the model's whole context: the manager's own default takes 80-90% of the machine's
  RAM on a CPU (13 GB for the tiny model), and max_batch x context was 11.2 GB resident for
  SmolLM2-135M (8,192 positions). A request that could never fit the cache is refused with a 400
  (`check_fits`); requests that fit but not all at once wait: the manager admits new ones only
  while blocks are free, and one starved for blocks is put back in the queue and redone;
- at most `MAX_STEP_TOKENS` prompt tokens per step: a longer prompt is prefilled over several
  steps, so a step's activations and attention mask stay small whatever the context;
- health: the manager's fatal error, a full queue, and a forward pass that has run longer than
  the request timeout (forward hooks).

Answers are decoded by `common.generation.Generator.decode_answer` (special tokens skipped, cut
before the first stop string, stripped), so the local server answers what Azure's score.py,
training's evaluation and the parity check compute; a stream's pieces add up to the same text.
Everything here runs on the server's event loop except the manager's thread, which hands its
outputs over with `call_soon_threadsafe` (`register_result_handler`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator

from transformers import ContinuousBatchingConfig, GenerationConfig

from common.generation import Generator
from common.payloads import BadRequest

PAGE_SIZE = 64  # tokens per KV-cache block
MAX_STEP_TOKENS = 512  # prompt tokens prefilled per generation step (longer prompts take several)
CPU_KV_CACHE_MIB = 1024  # a CPU's default budget: 23k tokens of SmolLM2-135M in float32
GPU_KV_CACHE_SHARE = 0.7  # a GPU's default budget: this share of the memory free after the weights


def kv_bytes_per_token(config, dtype) -> int:
    """Keys and values of one token in every layer: 2 x layers x kv heads x head dim x dtype size."""
    import torch

    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCacheBudget:
    """How many tokens the KV cache holds, from a memory budget: `kv_cache_mib`, or by default
    CPU_KV_CACHE_MIB on a CPU and GPU_KV_CACHE_SHARE of the free memory on a GPU."""

    def __init__(self, model, kv_cache_mib: float | None = None, max_batch: int | None = None):
        self.per_token = kv_bytes_per_token(model.config, model.dtype)
        if kv_cache_mib is not None:
            self.bytes, self.source = int(kv_cache_mib * 2**20), "server.kv_cache_mib"
        elif model.device.type == "cuda":
            import torch

            free, _ = torch.cuda.mem_get_info(model.device)
            self.bytes, self.source = (
                int(free * GPU_KV_CACHE_SHARE),
                f"{GPU_KV_CACHE_SHARE:.0%} of free GPU memory",
            )
        else:
            self.bytes, self.source = CPU_KV_CACHE_MIB * 2**20, "the CPU default"
        self.blocks = self.bytes // (self.per_token * PAGE_SIZE)
        context = getattr(model.config, "max_position_embeddings", None)
        if max_batch and context and self.blocks * PAGE_SIZE > max_batch * context:
            # Never more than every request at full context: a small model's budget would otherwise
            # hold millions of tokens, and a step's attention mask spans all of them (the tiny
            # model's server held 3.65 GiB with 1024 MiB of cache).
            self.blocks = -(-max_batch * context // PAGE_SIZE)
            self.bytes = self.blocks * PAGE_SIZE * self.per_token
            self.source += f", capped at max_batch x context ({max_batch} x {context})"
        if self.blocks < 1:
            raise ValueError(
                f"server.kv_cache_mib={kv_cache_mib} holds no block of {PAGE_SIZE} tokens "
                f"({self.per_token * PAGE_SIZE / 2**20:.1f} MiB each): raise it"
            )
        self.tokens = self.blocks * PAGE_SIZE

    def describe(self) -> str:
        return (
            f"KV cache {self.bytes / 2**20:g} MiB ({self.source}): {self.tokens:,} tokens in flight at "
            f"{self.per_token / 1024:.1f} KiB a token; set server.kv_cache_mib to change it"
        )


log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """As many requests as the server takes are in flight; retry shortly."""


class GenerationFailed(RuntimeError):
    """The generation loop failed this request (or died)."""


class GenerationLoopDied(GenerationFailed):
    """The generation loop died and could not be started again."""


class Slots:
    """Slots of the engine's capacity held for one request until `release()`; its jobs run within them."""

    def __init__(self, engine: BatchedGenerator, count: int):
        self.engine, self.count, self.held = engine, count, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.engine.reserved -= self.count


class Job:
    """One request in flight: its text as it grows, its answer, and a way to cancel it."""

    def __init__(
        self,
        engine: BatchedGenerator,
        request_id: str,
        prompt_ids: list[int],
        stop: list[str],
        stream: bool,
        own_slot: Slots | None = None,
    ):
        self.engine, self.request_id, self.prompt_ids = engine, request_id, prompt_ids
        self.stop, self.stream = stop, stream
        self.own_slot = own_slot  # released when the job ends; None: it runs within its request's slots
        self.request: dict = {}  # the manager's add_request arguments besides the prompt
        self.taken = False  # by the manager (False: dropped while its loop was stopping)
        self.hold = max((len(s) - 1 for s in stop), default=0)  # a stop string may be starting
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()  # streamed text; None: finished
        self.sent = 0  # characters streamed so far
        self.answer: dict | None = None
        self.error: str | None = None

    async def deltas(self) -> AsyncIterator[str]:
        """The answer's text piece by piece (one piece at the end unless streaming); then `answer` is set."""
        while (piece := await self.pieces.get()) is not None:
            yield piece
        if self.error is not None:
            raise GenerationFailed(self.error)

    async def result(self) -> dict:
        """The answer: `text`, `finish_reason` (stop | length) and `usage`, as Generator answers."""
        async for _ in self.deltas():
            pass
        return self.answer

    def cancel(self) -> None:
        """Stop generating (the client is gone or out of time) and free the slot; idempotent."""
        if self.engine.jobs.pop(self.request_id, None) is not None:
            self._stop_generating()
            self._end()

    def on_output(self, output) -> None:
        """A GenerationOutput from the manager (every step when streaming, else the last one)."""
        if self.request_id not in self.engine.jobs:
            return  # cancelled: an output that was already on its way
        if output.error is not None:
            self.fail(output.error)
            return
        tokens = list(output.generated_tokens)
        text = self.engine.generator.tokenizer.decode(tokens, skip_special_tokens=True)
        hit = any(s in text for s in self.stop)
        if hit or output.is_finished():
            self.answer = self.engine.generator.decode_answer(self.prompt_ids, tokens, self.stop)
            self._stream(self.answer["text"], final=True)
            if not output.is_finished():
                self._stop_generating()
            self._finish()
        elif self.stream:
            self._stream(text.lstrip(), final=False)

    def _stream(self, visible: str, final: bool) -> None:
        # Hold back what may still change: a stop string's start, trailing spaces, a partial character.
        if not final:
            safe = min(len(visible) - self.hold, len(visible.rstrip()))
            while safe > 0 and visible[safe - 1] == "\ufffd":
                safe -= 1
            visible = visible[: max(safe, 0)]
        if self.stream and len(visible) > self.sent:
            self.pieces.put_nowait(visible[self.sent :])
            self.sent = len(visible)

    def fail(self, error: str) -> None:
        if self.engine.jobs.pop(self.request_id, None) is not None:
            self.error = error
            self._end()

    def _stop_generating(self) -> None:
        self.engine.manager.cancel_request(self.request_id)
        # The manager forgets a handler after a last output, which a cancelled request never gets.
        self.engine.manager.output_router.result_handlers.pop(self.request_id, None)

    def _finish(self) -> None:
        self.engine.jobs.pop(self.request_id, None)
        self._end()

    def _end(self) -> None:
        if self.own_slot is not None:
            self.own_slot.release()
        self.pieces.put_nowait(None)


class BatchedGenerator:
    """Requests in, answers out, batched continuously by transformers; call from the event loop."""

    def __init__(
        self,
        generator: Generator,
        max_batch: int = 16,
        max_queue: int = 64,
        kv_cache_mib: float | None = None,
    ):
        self.generator = generator
        model, tokenizer = generator.model, generator.tokenizer
        self.eos = set(generator.eos_token_ids)
        # Warpers exist only when the config needs them; requests then set their own values.
        sampling = GenerationConfig(
            do_sample=True,
            temperature=0.5,
            top_p=0.5,
            top_k=len(tokenizer),
            eos_token_id=sorted(self.eos),
            pad_token_id=tokenizer.pad_token_id,
        )
        self.budget = KVCacheBudget(model, kv_cache_mib, max_batch)
        config = ContinuousBatchingConfig(
            per_request_processors=True,
            max_requests_per_batch=max_batch,
            page_size=PAGE_SIZE,
            num_blocks=self.budget.blocks,
            max_batch_tokens=MAX_STEP_TOKENS,
        )
        self.manager = model.init_continuous_batching(
            generation_config=sampling, continuous_batching_config=config
        )
        self.capacity = max_batch + max_queue
        self.reserved = 0  # slots held (Slots), at most `capacity`
        self.restarts = 0  # times the generation loop died and was started again
        self.dead: str | None = None  # why it could not be started again
        self._watch: asyncio.Task | None = None
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count()
        self.forward_started: float | None = None  # set while the manager's thread runs a forward pass
        self._hooks = [
            model.register_forward_pre_hook(lambda *_: setattr(self, "forward_started", time.monotonic())),
            model.register_forward_hook(lambda *_: setattr(self, "forward_started", None)),
        ]

    def start(self) -> None:
        """Start the generation loop, and the watch that starts it again should it die (call from the event loop)."""
        self.manager.start()
        self._watch = asyncio.get_running_loop().create_task(self._restart_when_dead())

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for job in list(self.jobs.values()):
            job.cancel()
        self.manager.stop(block=True, timeout=5)
        for hook in self._hooks:
            hook.remove()

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """BadRequest (400) for a request the KV cache could not hold even alone: it would never run."""
        if prompt_tokens + max_new_tokens > self.budget.tokens:
            raise BadRequest(
                f"This server's KV cache holds {self.budget.tokens} tokens; the request needs "
                f"{prompt_tokens + max_new_tokens} ({prompt_tokens} in the messages, {max_new_tokens} in the "
                "completion). Reduce the messages or max_tokens, or start the server with a larger "
                "server.kv_cache_mib.",
                param="messages",
                code="context_length_exceeded",
            )

    def reserve(self, count: int) -> Slots:
        """`count` slots for one request's jobs; QueueFull when fewer are free."""
        if self.dead is not None:
            raise GenerationLoopDied(self.dead)
        if self.reserved + count > self.capacity:
            raise QueueFull(f"{self.reserved} of {self.capacity} slots are taken, {count} asked for")
        self.reserved += count
        return Slots(self, count)

    def submit(
        self,
        prompt_ids: list[int],
        generate: dict,
        stop: list[str],
        stream: bool = False,
        slots: Slots | None = None,
    ) -> Job:
        """Queue a request (`generate`: common.payloads.generation_kwargs' mapping) within `slots`
        its request reserved, or in a slot of its own (QueueFull when none is free)."""
        own_slot = self.reserve(1) if slots is None else self._alive()
        request_id = f"req-{next(self._ids)}"
        job = Job(self, request_id, prompt_ids, stop, stream, own_slot)
        if generate.get("do_sample"):
            sampling = {"temperature": float(generate["temperature"]), "top_p": float(generate["top_p"])}
        else:
            sampling = {"top_k": 1, "temperature": 1.0, "top_p": 1.0}  # greedy: the argmax, as generate()
        job.request = {
            "request_id": request_id,
            "max_new_tokens": generate["max_new_tokens"],
            "streaming": stream or bool(stop),
            "eos_token_id": sorted(self.eos),
            **sampling,
        }
        self.jobs[request_id] = job
        self._send(job)
        return job

    def _alive(self) -> None:
        if self.dead is not None:
            raise GenerationLoopDied(self.dead)

    def _send(self, job: Job) -> None:
        """Hand a job to the manager. One it drops (its loop is stopping after a failure) stays
        pending, and is sent again once the loop has been started again."""
        self.manager.register_result_handler(job.request_id, job.on_output)
        job.taken = self.manager.add_request(job.prompt_ids, **job.request) is not None

    async def _restart_when_dead(self) -> None:
        """A step that raises stops the manager's thread, which first fails every request it holds
        (they answer 500). Start it again and send the requests it dropped meanwhile."""
        status = self.manager.background_thread_status
        while True:
            await asyncio.sleep(0.05)
            if status.fatal_error is None:
                continue
            error = status.fatal_error
            await asyncio.to_thread(self.manager.join, time.perf_counter(), 30)
            await asyncio.sleep(0.01)  # the failed requests' last outputs, scheduled before it ended
            if self.manager.is_running():
                self.dead = f"the generation loop died ({type(error).__name__}: {error}) and did not stop"
                for job in list(self.jobs.values()):
                    job.fail(self.dead)
                return
            self.restarts += 1
            log.error(
                "the generation loop died (%s: %s); started it again (restart %d)",
                type(error).__name__,
                error,
                self.restarts,
            )
            self.manager.start()
            for job in list(self.jobs.values()):
                if not job.taken:
                    self._send(job)

    def not_ready_reason(self, request_timeout_s: float) -> str | None:
        """Why the server should not take more work now (None: it should)."""
        if self.dead is not None:
            return self.dead
        if self.reserved >= self.capacity:
            return f"the queue is full ({self.reserved} of {self.capacity} slots taken)"
        started = self.forward_started
        if started is not None and time.monotonic() - started > request_timeout_s:
            return f"a generation step has run for more than the request timeout ({request_timeout_s:g} s)"
        return None
