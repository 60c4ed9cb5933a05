"""LoRA adapters through PEFT (https://github.com/huggingface/peft): the trained model is the base with low-rank
adapters (only they, and a reward model's score head, train); the reference of an objective is the same base with
the adapter switched off (:class:`AdapterOff`), so no second copy of the model is held; a run saves the adapter in
PEFT's format and, when asked, the merged model as a plain Hugging Face folder.

The Llama fast path steps aside for an adapted model (it reads the base weights directly and would ignore the
adapter; :func:`divalign.models.runtime.fast_path_blocker`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

#: PEFT's name for "every linear layer but the output head".
ALL_LINEAR = "all-linear"
ADAPTER_CONFIG = "adapter_config.json"


def add_lora(model, r: int, alpha: float, dropout: float, target_modules: str = ALL_LINEAR,
             classifier: bool = False):
    """``model`` with fresh LoRA adapters of rank ``r`` (scale ``alpha / r``) on ``target_modules`` (comma-separated
    module names, or ``all-linear``); ``classifier``: a sequence classifier whose score head trains too."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = target_modules if target_modules == ALL_LINEAR else [t.strip() for t in target_modules.split(",")]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type=TaskType.SEQ_CLS if classifier else TaskType.CAUSAL_LM)
    with _quiet():
        return get_peft_model(model, config)


def load_adapter(model, folder: str | os.PathLike):
    """``model`` with the trainable adapter saved in ``folder`` (a checkpoint's)."""
    from peft import PeftModel

    with _quiet():
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)


@contextlib.contextmanager
def _quiet():
    """PEFT calls a transformers method that warns of its own deprecation; the warning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def is_adapter_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).exists()


def has_adapter(model) -> bool:
    return hasattr(model, "peft_config")


class AdapterOff(nn.Module):
    """The base of an adapted model: its forward runs the model with the adapter switched off, without gradient.
    Holds no parameters of its own (the model is not registered as a submodule), so placing or freezing the
    reference touches nothing of the trained model."""

    def __init__(self, adapted):
        super().__init__()
        self._adapted = (adapted,)
        self.config = adapted.config
        self.peft_config = adapted.peft_config  # an adapted model: the fast path steps aside
        self.eval()

    @property
    def adapted(self):
        return self._adapted[0]

    def forward(self, *args, **kwargs):
        with torch.no_grad(), self.adapted.disable_adapter():
            return self.adapted(*args, **kwargs)


def merged(model):
    """A plain Hugging Face model with the adapter folded into the base weights (a copy; ``model`` keeps its
    adapter)."""
    return copy.deepcopy(model).merge_and_unload()
