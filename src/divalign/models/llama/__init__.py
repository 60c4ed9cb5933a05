"""The Llama fast path: divalign's own kernels for Hugging Face Llama models, reached only through
:func:`divalign.models.completion_forward` / :func:`divalign.models.segment_logprobs` and the sampler factory
:func:`divalign.generation.make_sampler`, and chosen for a model in one place (:mod:`divalign.models.runtime`).

* :mod:`~divalign.models.llama.weights`: the one reader of a Hugging Face Llama model (what is covered, sizes,
  parameters by role); the kernels below take its :class:`LlamaParams`, never the model;
* :mod:`~divalign.models.llama.norm`: RMSNorm;
* :mod:`~divalign.models.llama.functional`: a functional forward for scoring and the compiled training forward;
* :mod:`~divalign.models.llama.layout`, :mod:`~divalign.models.llama.train`, :mod:`~divalign.models.llama.head`:
  the training pass with a written-out backward and the reference in the same pass;
* :mod:`~divalign.models.llama.decoder`: prefill and token steps for sampling.

Every piece gives the values (and gradients) of the Hugging Face forward; the tests compare them.
"""

from divalign.models.llama.weights import LlamaParams, llama_params, supports

__all__ = ["LlamaParams", "llama_params", "supports"]
