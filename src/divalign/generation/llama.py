"""The sampler for Llama-family models: the loop of :class:`~divalign.generation.decode.Sampler` over the lean
decoder of :mod:`divalign.llama_fast` (folded weights, preallocated cache, a few dozen operations per layer)."""

from __future__ import annotations

from divalign import llama_fast
from divalign.generation.decode import Sampler

supports = llama_fast.supports


class LlamaSampler(Sampler):
    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.decoder = llama_fast.Decoder(model)

    def refresh(self) -> None:
        self.decoder.refresh()

    def prefill(self, ids, mask, max_new_tokens):
        return self.decoder.prefill(ids, mask, max_new_tokens)

    def repeat(self, state, times):
        return self.decoder.repeat(state, times)

    def step(self, state, tokens):
        return self.decoder.step(state, tokens)
