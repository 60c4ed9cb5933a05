"""Objectives: pure loss functions of tensors, one objective (or preset family) per file, registered by name
(:mod:`divalign.objectives.registry`); what a trainer reads from their options is
:mod:`divalign.objectives.interface`. The equations, sources and choices are in docs/algorithms.md.
"""

from divalign.objectives import (  # noqa: F401  (each module registers its objectives)
    dagrpo,
    dpo,
    fdo,
    fdpo,
    fgrpo,
    fhal,
    fpo,
    grpo,
    ipo,
    kto,
    ppo,
    reward,
    rloo,
)
from divalign.objectives.batch import OnlineBatch, PairBatch, UnpairedBatch, make_batch
from divalign.objectives.interface import KLPenalty, OnlineOptions, RolloutPlan, UnpairedOptions
from divalign.objectives.registry import FAMILIES, Objective, get, names, register

__all__ = ["FAMILIES", "KLPenalty", "Objective", "OnlineBatch", "OnlineOptions", "PairBatch", "RolloutPlan",
           "UnpairedBatch", "UnpairedOptions", "get", "make_batch", "names", "register"]
