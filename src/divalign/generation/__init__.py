"""Sampling completions: one loop (:class:`Sampler`) over a decoder per model — the Llama decoder of
:mod:`divalign.models.llama.decoder` for models on the fast path, the generic Hugging Face one otherwise."""

from divalign.generation.decode import Decoder, HFDecoder, Sampler
from divalign.generation.sampling import Rollout, concat_rollouts, left_pad, sample_next
from divalign.models import runtime_of
from divalign.models.llama.decoder import LlamaDecoder


def make_sampler(model, tokenizer) -> Sampler:
    """A sampler for ``model``, with the Llama decoder when the model runs the fast path
    (:func:`divalign.models.runtime_of`)."""
    runtime = runtime_of(model)
    decoder = LlamaDecoder(runtime.llama) if runtime.lean else HFDecoder(model)
    return Sampler(model, tokenizer, decoder)


__all__ = ["Decoder", "HFDecoder", "Rollout", "Sampler", "concat_rollouts", "left_pad", "make_sampler", "sample_next"]
