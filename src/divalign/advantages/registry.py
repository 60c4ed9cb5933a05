"""The registry of advantage estimators and the one signature they share: ``fn(inputs, options) -> Advantages``
(docs/algorithms.md#advantage-estimators).

Rows are responses; ``group_ids`` tags the prompt each belongs to; a KL penalty an objective folds into the reward
arrives per token in ``inputs.kl``. Registration declares what an estimator needs beyond rewards and groups (a value
head's predictions, fine-grained scores, a group size) and the options class it reads: an objective whose options
derive from that class can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class EstimatorInputs:
    rewards: Tensor  #: (B,) one scalar reward per response
    group_ids: Tensor  #: (B,) prompt index of each response
    num_groups: int
    mask: Tensor  #: (B, T) 1.0 on real completion tokens
    kl: Tensor | None = None  #: (B, T) per-token KL estimate (log π_old − log π_ref, or k3) on real tokens
    kl_coef: float = 0.0  #: weight of ``kl`` folded into the reward
    values: Tensor | None = None  #: (B, T) the value head's predictions at sampling time
    scores: Tensor | None = None  #: (B,) fine-grained scores of the responses

    def sequence_rewards(self) -> Tensor:
        """The reward with the KL penalty folded in per sequence: r_i − c·Σ_t kl_{i,t}."""
        return self.rewards if self.kl is None else self.rewards - self.kl_coef * self.kl.sum(-1)


@dataclass
class Advantages:
    sequence: Tensor  #: (B,) one advantage per response (zeros for a per-token estimator)
    token: Tensor | None = None  #: (B, T) per-token advantages, when the estimator gives them
    returns: Tensor | None = None  #: (B, T) value targets, when the estimator gives them


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[[EstimatorInputs, Any], Advantages]
    options: type | None  #: the options class the estimator reads (None: it reads none)
    needs_values: bool  #: reads a value head's predictions (the trainer then trains one)
    needs_scores: bool  #: reads fine-grained scores of the responses
    min_group_size: int  #: responses it needs per prompt
    raw_singletons: bool = False  #: it can give a lone response its raw reward (``singleton_groups raw``)

    def group_size_needed(self, options) -> int:
        """Responses per prompt it needs under ``options``: one when it gives lone responses their raw reward."""
        return 1 if self.raw_singletons and singleton_groups(options) == "raw" else self.min_group_size

    def usable_with(self, options) -> bool:
        """Whether an objective with these options can use this estimator."""
        return self.options is None or isinstance(options, self.options)


_REGISTRY: dict[str, Estimator] = {}


def singleton_groups(options) -> str:
    """The ``singleton_groups`` choice of an objective's options (those of :mod:`divalign.objectives.policy` offer
    it; every other objective keeps ``zero``: a lone response gets advantage 0)."""
    return getattr(options, "singleton_groups", "zero")


def register(name: str, *, options: type | None = None, needs_values: bool = False, needs_scores: bool = False,
             min_group_size: int = 1, raw_singletons: bool = False):
    """Decorator: register an estimator ``fn(inputs, options) -> Advantages`` under ``name``."""

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"advantage estimator '{name}' registered twice")
        _REGISTRY[name] = Estimator(name, fn, options, needs_values, needs_scores, min_group_size, raw_singletons)
        return fn

    return decorate


def get(name: str) -> Estimator:
    if name not in _REGISTRY:
        raise ValueError(f"unknown advantage estimator '{name}' (expected one of: {', '.join(names())})")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)
