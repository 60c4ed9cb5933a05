"""Name registry for objectives.

Every objective is a pure function of its family's tensor bundle (:mod:`divalign.objectives.batch`) and an
instance of the options dataclass registered with it, returning ``(loss, metrics)``. ``metrics`` maps names to
floats that are *additive over micro-batches*: each is this micro-batch's share of the whole-batch value, so a
trainer that accumulates gradients simply sums them. Families and their signatures:

* ``online`` (GRPO family, RLOO, PPO, DaGRPO, f-GRPO, f-HAL): ``loss(OnlineBatch, options)``; options derive
  from :class:`~divalign.objectives.interface.OnlineOptions`. An online objective with an off-policy part on
  preference data (f-HAL) also registers ``preference_loss(UnpairedBatch, options)``;
* ``pairs`` (DPO, IPO, f-DPO, f-PO): ``loss(PairBatch, options)``;
* ``unpaired`` (FDO and its presets, KTO): ``loss(UnpairedBatch, options, state)``, then
  ``options.next_state(state, metrics)`` once per batch; options derive from
  :class:`~divalign.objectives.interface.UnpairedOptions`;
* ``reward`` (Bradley–Terry): ``loss(chosen_scores, rejected_scores, options, num_pairs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

FAMILIES = ("online", "pairs", "unpaired", "reward")


@dataclass(frozen=True)
class Objective:
    name: str
    family: str
    loss: Callable[..., tuple[Any, dict[str, float]]]
    options: type
    #: the off-policy loss on preference data of an online objective that has one (f-HAL), else None
    preference_loss: Callable[..., tuple[Any, dict[str, float]]] | None = None

    def make_options(self, values: dict[str, Any] | None = None):
        """Build the options dataclass from a mapping, naming any unknown key (``ValueError``)."""
        values = dict(values or {})
        known = {f.name for f in fields(self.options) if f.init}
        for key in values:
            if key not in known:
                raise ValueError(f"unknown option '{key}' for objective '{self.name}' "
                                 f"(expected: {', '.join(sorted(known))})")
        return self.options(**values)


_REGISTRY: dict[str, Objective] = {}


def register(name: str, family: str, options: type, preference_loss: Callable | None = None):
    """Decorator: register ``fn`` under ``name`` for ``family`` with its options dataclass."""
    if family not in FAMILIES:
        raise ValueError(f"unknown objective family '{family}' (expected one of: {', '.join(FAMILIES)})")

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"objective '{name}' registered twice")
        _REGISTRY[name] = Objective(name, family, fn, options, preference_loss)
        return fn

    return decorate


def get(name: str, families: tuple[str, ...] | None = None) -> Objective:
    """The objective called ``name`` (restricted to ``families`` when given); ``ValueError`` otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective '{name}' (expected one of: {', '.join(names(families))})")
    if families is not None and _REGISTRY[name].family not in families:
        raise ValueError(f"objective '{name}' ({_REGISTRY[name].family} family) is not accepted here (expected one "
                         f"of: {', '.join(names(families))})")
    return _REGISTRY[name]


def names(families: tuple[str, ...] | None = None) -> list[str]:
    return sorted(n for n, o in _REGISTRY.items() if families is None or o.family in families)
