"""Rewards for online RL. A reward scores a batch: ``reward(prompts, completions, answers) -> list[float]``.

Built-in names: ``numeric`` (the final number, GSM8K style) and ``exact``; ``module:function`` imports a user
function scoring one completion, ``function(completion, answer) -> float``; ``rm:FOLDER`` scores with a trained
reward model (:mod:`divalign.rewards.model`). Verifiable rewards score a correct answer 1.0, which is what the
logged pass rate counts.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol

from divalign.errors import UserError
from divalign.rewards.numeric import exact_reward, numeric_reward


class Reward(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], answers: list[str]) -> list[float]: ...


class PerSample:
    """A reward from a function of one (completion, answer)."""

    def __init__(self, fn: Callable[[str, object], float], name: str = ""):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "reward")

    def __call__(self, prompts, completions, answers):
        return [float(self.fn(c, a)) for c, a in zip(completions, answers)]


BUILTIN = {"numeric": numeric_reward, "exact": exact_reward}


def get(spec: str) -> Reward:
    if spec.startswith("rm:"):
        from divalign.rewards.model import RewardModelScorer

        return RewardModelScorer(spec[3:])
    if ":" in spec:
        return PerSample(_import(spec), spec)
    if spec not in BUILTIN:
        raise UserError(
            f"unknown reward '{spec}' (expected one of: {', '.join(BUILTIN)}, rm:FOLDER or module:function)"
        )
    return PerSample(BUILTIN[spec], spec)


def _import(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"reward '{spec}': cannot import module '{module_name}' ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"reward '{spec}': module '{module_name}' has no function '{attr}'")
    return fn
