"""Objectives: pure loss functions of tensors, registered by name (see :mod:`divalign.objectives.registry`)."""

from divalign.objectives import fgrpo, grpo  # noqa: F401  (registers the objectives)
from divalign.objectives.batch import OnlineBatch, make_batch
from divalign.objectives.registry import Objective, get, names, register

__all__ = ["Objective", "OnlineBatch", "get", "make_batch", "names", "register"]
