"""The exported model answering in its own runtime: onnxruntime-genai, or llama.cpp (llama-cpp-python).

Each runtime decodes greedily from the prompt ids the MLflow model was given; fed the prompt plus
the reference's answer in one pass (teacher forcing), it gives its argmax at every answer position
(onnxruntime-genai: the model's `logits` output for the appended tokens; llama.cpp: `eval` with
`logits_all`, its `scores` row per position). It renders the
conversation with what the export carries (ORT GenAI's tokenizer and tokenizer_config template;
the GGUF's embedded template and vocabulary), so the gate sees whether those give the ids
training used. llama.cpp picks Phi-3.5's LongRoPE factors by the context it allocates (long
above original_max_position_embeddings), transformers and ORT GenAI by the sequence length: a
prompt below the switch is answered in a context no larger than the switch point.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deploy.export.errors import ExportRefused
from deploy.export.gguf import import_llama_cpp


class OnnxRuntimeGenAI:
    def __init__(self, model_dir: Path, adapter: Path | None = None):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir))
        self.tokenizer = og.Tokenizer(self.model)
        self.adapters = None
        if adapter is not None:
            self.adapters = og.Adapters(self.model)
            self.adapters.load(str(adapter), "finetuned")

    def render_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        return [int(t) for t in self.tokenizer.encode(text)]

    def generator(self, max_length: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=max_length)
        generator = self.og.Generator(self.model, params)
        if self.adapters is not None:
            generator.set_active_adapter(self.adapters, "finetuned")
        return generator

    def forced_argmax(self, prompt: list[int], answer: list[int], max_new_tokens: int) -> list[int]:
        """The argmax at each of `answer`'s positions, given the prompt and the answer before it."""
        generator = self.generator(len(prompt) + max_new_tokens)
        fed = prompt + answer[:-1]
        generator.append_tokens([fed])
        logits = np.asarray(generator.get_output("logits"))  # (1, appended tokens, vocab)
        if logits.shape[1] != len(fed):
            raise ExportRefused(
                f"onnxruntime-genai gave logits for {logits.shape[1]} of {len(fed)} positions: "
                "the graph keeps only the last ones, so the gate cannot compare every answer token"
            )
        return logits[0, len(prompt) - 1 :].argmax(axis=-1).tolist()

    def greedy(self, prompt: list[int], max_new_tokens: int, stops: set[int]) -> list[int]:
        generator = self.generator(len(prompt) + max_new_tokens)
        generator.append_tokens([prompt])
        new: list[int] = []
        while len(new) < max_new_tokens and not (new and new[-1] in stops) and not generator.is_done():
            generator.generate_next_token()
            new.append(int(generator.get_next_tokens()[0]))
        return new


class LlamaCpp:
    def __init__(self, path: Path, context: int, switch: int | None):
        self.llama_cpp = import_llama_cpp()
        self.path, self.context, self.switch = path, context, switch
        self.loaded: dict[int, object] = {}  # by allocated context

    def llama(self, n_ctx: int):
        if n_ctx not in self.loaded:
            self.loaded.clear()  # one context at a time
            # One thread: llama.cpp's threads spin while they wait for each other, and on a shared
            # machine two took about 30 s per 32-token answer of a 14 MB model.
            # logits_all: `eval` keeps every position's logits in `scores` (teacher forcing).
            llama = self.llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_threads=1,
                n_batch=512,
                logits_all=True,
                verbose=False,
            )
            if self.switch and n_ctx <= self.switch < llama.n_ctx():
                raise ExportRefused(
                    f"llama.cpp allocates {llama.n_ctx()} positions when asked for {n_ctx} (a multiple of 256), "
                    f"past the LongRoPE switch at {self.switch}: it would answer every prompt with the long factors"
                )
            self.loaded[n_ctx] = llama
        return self.loaded[n_ctx]

    def context_for(self, tokens: int) -> int:
        """The switch point when the whole sequence stays below it (short factors), else the model's context."""
        if self.switch and tokens <= self.switch:
            return self.switch
        return self.context

    def render_ids(self, messages: list[dict]) -> list[int]:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = self.llama(next(iter(self.loaded), self.context_for(1)))
        metadata = llama.metadata
        vocab = llama.tokenizer()
        bos, eos = (
            vocab.decode([int(metadata[f"tokenizer.ggml.{name}_token_id"])])
            if f"tokenizer.ggml.{name}_token_id" in metadata
            else ""
            for name in ("bos", "eos")
        )
        formatter = Jinja2ChatFormatter(metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)
        prompt = formatter(messages=messages).prompt
        return llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def forced_argmax(self, prompt: list[int], answer: list[int], max_new_tokens: int) -> list[int]:
        """The argmax at each of `answer`'s positions, given the prompt and the answer before it, in the
        context greedy() answers this prompt in (so with the same LongRoPE factors)."""
        llama = self.llama(self.context_for(len(prompt) + max_new_tokens))
        llama.reset()
        llama.eval(prompt + answer[:-1])
        return llama.scores[len(prompt) - 1 : len(prompt) - 1 + len(answer)].argmax(axis=-1).tolist()

    def greedy(self, prompt: list[int], max_new_tokens: int, stops: set[int]) -> list[int]:
        llama = self.llama(self.context_for(len(prompt) + max_new_tokens))
        llama.reset()  # the whole prompt evaluated afresh, not a prefix the last prompt left cached
        new: list[int] = []
        for token in llama.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            new.append(int(token))
            if len(new) >= max_new_tokens or token in stops:
                break
        return new
