"""How a model runs its forward passes: the one decision between divalign's Llama kernels
(:mod:`divalign.models.llama`) and the model's own Hugging Face forward.

The decision is made once per model by :func:`configure`, from the model and the options, and kept on the model
object, so that every forward, scoring pass and sampler built for it follows it and nothing above the model layer
carries it around. A copy of the model (the frozen reference) keeps its decision. A model never configured runs
the Llama kernels when it qualifies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def configure(model, fast_path: bool = True, compile: bool = False, dtype: torch.dtype = torch.float32,
              gradient_checkpointing: bool = False) -> Runtime:
    """Decide how ``model`` runs and keep the decision on it: the Llama kernels when ``fast_path`` is asked for, the
    model is a plain Llama (:func:`divalign.models.llama.supports`) and nothing of the run stands in their way
    (:func:`fast_path_blocker`); its Hugging Face forward otherwise. ``compile`` compiles the Llama training and
    scoring forward (a slow start; see the README). The kernels read the parameters found here; configure again
    after replacing any of the model's modules."""
    usable = fast_path and supports(model) and fast_path_blocker(model, dtype, gradient_checkpointing) is None
    params = llama_params(model) if usable else None
    runtime = Runtime(llama=params, compiled=compile and params is not None)
    setattr(model, ATTRIBUTE, runtime)
    return runtime


def fast_path_blocker(model, dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False) -> str | None:
    """Why the Llama kernels must step aside for this model and run, or None. They read and train the Hugging Face
    weights directly, in fp32, on the CPU, where their values and gradients are tested against the Hugging Face
    forward: an adapter (PEFT) or a sharded weight (FSDP2) would be silently ignored, and on a GPU or in bf16/fp16
    they are not proven, so the model's own forward runs there (with SDPA attention on a GPU)."""
    params = list(model.parameters())
    if hasattr(model, "peft_config"):
        return "the model carries adapters (PEFT)"
    if any(hasattr(p, "to_local") for p in params):
        return "the model's parameters are sharded (FSDP2)"
    if any(p.device.type != "cpu" for p in params):
        return "the model is on a GPU"
    if dtype != torch.float32 or any(p.dtype != torch.float32 for p in params):
        return "the run computes in reduced precision"
    if gradient_checkpointing:
        return "gradient checkpointing recomputes the Hugging Face forward"
    return None


def runtime_of(model) -> Runtime:
    """The decision :func:`configure` made for ``model`` (made now, with the defaults, if none was)."""
    return getattr(model, ATTRIBUTE, None) or configure(model)
