"""Models: loading and saving Hugging Face models, how each runs (:mod:`~divalign.models.runtime`), and the
forward passes everything above reads log-probabilities from (:mod:`~divalign.models.forward`). The Llama fast
path (:mod:`~divalign.models.llama`) is reached only through these and through the sampler factory of
:mod:`divalign.generation`."""

from divalign.models.forward import (
    CompletionOutput,
    completion_forward,
    completion_logprobs,
    prompt_sharing_pays,
    segment_logprobs,
    sequence_scores,
)
from divalign.models.loading import (
    check_causal_lm_folder,
    disable_dropout,
    frozen_copy,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    param_count,
    save_model,
    set_training,
)
from divalign.models.runtime import Runtime, configure, runtime_of

__all__ = ["CompletionOutput", "Runtime", "check_causal_lm_folder", "completion_forward", "completion_logprobs",
           "configure", "disable_dropout", "frozen_copy", "load_causal_lm", "load_reward_model", "load_tokenizer",
           "param_count", "prompt_sharing_pays", "runtime_of", "save_model", "segment_logprobs", "sequence_scores",
           "set_training"]
