"""Reward functions by name. A reward maps (completion text, gold answer) to a float; verifiable rewards
score a correct answer 1.0, which is what the logged pass rate counts.

Besides the built-in names, ``module:function`` imports a user function with the same signature.
"""

from __future__ import annotations

import importlib
from typing import Callable

from divalign.errors import UserError
from divalign.rewards.numeric import exact_reward, numeric_reward

RewardFn = Callable[[str, object], float]

REWARDS: dict[str, RewardFn] = {"numeric": numeric_reward, "exact": exact_reward}


def get(name: str) -> RewardFn:
    if ":" in name:
        return _import(name)
    if name not in REWARDS:
        raise UserError(f"unknown reward '{name}' (expected one of: {', '.join(REWARDS)}, or module:function)")
    return REWARDS[name]


def _import(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"reward '{spec}': cannot import module '{module_name}' ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"reward '{spec}': module '{module_name}' has no function '{attr}'")
    return fn
