"""How a model runs its forward passes: the one decision between divalign's Llama kernels
(:mod:`divalign.models.llama`) and the model's own Hugging Face forward.

The decision is made once per model by :func:`configure`, from the model and the options, and kept on the model
object, so that every forward, scoring pass and sampler built for it follows it and nothing above the model layer
carries it around. A copy of the model (the frozen reference) keeps its decision. A model never configured runs
the Llama kernels when it qualifies.
"""

from __future__ import annotations

from dataclasses import dataclass

from divalign.models.llama.weights import LlamaParams, llama_params, supports

#: The attribute of a model object that holds its :class:`Runtime`.
ATTRIBUTE = "divalign_runtime"


@dataclass(frozen=True)
class Runtime:
    llama: LlamaParams | None  #: the model's parameters for the Llama kernels, or None: its Hugging Face forward
    compiled: bool = False  #: train and score through the compiled functional forward instead of the written-out pass

    @property
    def lean(self) -> bool:
        """Whether the model runs the Llama kernels (decoding, scoring, the written-out training pass)."""
        return self.llama is not None


def configure(model, fast_path: bool = True, compile: bool = False) -> Runtime:
    """Decide how ``model`` runs and keep the decision on it: the Llama kernels when ``fast_path`` is asked for and
    the model is a plain Llama (:func:`divalign.models.llama.supports`), its Hugging Face forward otherwise;
    ``compile`` compiles the Llama training and scoring forward (a slow start; see the README). The kernels read
    the parameters found here; configure again after replacing any of the model's modules."""
    params = llama_params(model) if fast_path and supports(model) else None
    runtime = Runtime(llama=params, compiled=compile and params is not None)
    setattr(model, ATTRIBUTE, runtime)
    return runtime


def runtime_of(model) -> Runtime:
    """The decision :func:`configure` made for ``model`` (made now, with the defaults, if none was)."""
    return getattr(model, ATTRIBUTE, None) or configure(model)
