"""Samplers: one small interface (``generate`` → :class:`Rollout`), a lean path for Llama, a generic path."""

from divalign.generation import llama
from divalign.generation.decode import HFSampler, Sampler
from divalign.generation.sampling import Rollout, left_pad, sample_next


def make_sampler(model, tokenizer, fast: bool = True) -> Sampler:
    """The lean Llama decoder when the model qualifies (and ``fast``), otherwise the generic one."""
    if fast and llama.supports(model):
        return llama.LlamaSampler(model, tokenizer)
    return HFSampler(model, tokenizer)


__all__ = ["HFSampler", "Rollout", "Sampler", "left_pad", "make_sampler", "sample_next"]
