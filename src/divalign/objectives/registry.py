"""Name registry for objectives.

Every objective is a pure function of its family's tensor bundle and an instance of the options dataclass
registered with it, returning ``(loss, metrics)`` (the unpaired family also takes a small running ``state``;
see :mod:`divalign.objectives`). ``metrics`` maps names to floats that are *additive over micro-batches*: each
is this micro-batch's share of the whole-batch value, so a trainer that accumulates gradients simply sums them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from divalign.errors import UserError


@dataclass(frozen=True)
class Objective:
    name: str
    family: str
    loss: Callable[..., tuple[Any, dict[str, float]]]
    options: type

    def make_options(self, values: dict[str, Any] | None = None, where: str = "options"):
        """Build the options dataclass from a mapping, naming any unknown key."""
        values = dict(values or {})
        known = {f.name for f in fields(self.options)}
        for key in values:
            if key not in known:
                raise UserError(
                    f"{where}: unknown option '{key}' for objective '{self.name}' "
                    f"(expected: {', '.join(sorted(known))})"
                )
        return self.options(**values)


_REGISTRY: dict[str, Objective] = {}


def register(name: str, family: str, options: type):
    """Decorator: register ``fn`` under ``name`` for ``family`` with its options dataclass."""

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"objective '{name}' registered twice")
        _REGISTRY[name] = Objective(name=name, family=family, loss=fn, options=options)
        return fn

    return decorate


def get(name: str, family: str | None = None) -> Objective:
    if name not in _REGISTRY or (family is not None and _REGISTRY[name].family != family):
        raise UserError(f"unknown objective '{name}' (expected one of: {', '.join(names(family))})")
    return _REGISTRY[name]


def names(family: str | None = None) -> list[str]:
    return sorted(n for n, o in _REGISTRY.items() if family is None or o.family == family)
