"""Objectives: pure loss functions of tensors, one objective (or preset family) per module, registered by name
(:mod:`~divalign.objectives.registry`); what a trainer reads from their options is
:mod:`~divalign.objectives.interface`. Every module of this package is imported here, so an objective registers
itself by being written into the package. The equations, sources and choices are in docs/algorithms.md.
"""

import importlib
import pkgutil

from divalign.objectives.batch import OnlineBatch, PairBatch, UnpairedBatch, make_batch
from divalign.objectives.interface import KLPenalty, OnlineOptions, RolloutPlan, UnpairedOptions
from divalign.objectives.registry import FAMILIES, Objective, get, names, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FAMILIES", "KLPenalty", "Objective", "OnlineBatch", "OnlineOptions", "PairBatch", "RolloutPlan",
           "UnpairedBatch", "UnpairedOptions", "get", "make_batch", "names", "register"]
