"""Rewards for online RL. A reward scores a batch: ``reward(prompts, completions, answers) -> list[float]``.

A reward spec is one term or a weighted sum of terms, ``0.7*exact + 0.3*rm:runs/rm/model``. Terms:

* ``numeric`` (the final number, GSM8K style) and ``exact`` — verifiable rewards, 1.0 when correct (the
  logged pass rate counts rewards ≥ 1); ``partial`` — partial credit in [0, 1] (closeness of the final number, or
  string similarity);
* ``rm:FOLDER`` — a trained reward model (:mod:`divalign.rewards.model`);
* ``module:function`` — a user function scoring one completion, ``function(completion, answer) -> float``;
  each call is bounded by a timeout (``timeout`` seconds, default 10) and scores 0 with a warning when it
  runs over or raises.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from divalign.errors import UserError
from divalign.rewards.model import RewardModelScorer
from divalign.rewards.numeric import exact_reward, numeric_reward
from divalign.rewards.partial import partial_credit


class Reward(Protocol):
    def __call__(self, prompts: list[str], completions: list[str], answers: list[str]) -> list[float]: ...


class PerSample:
    """A reward from a function of one (completion, answer)."""

    def __init__(self, fn: Callable[[str, object], float], name: str = ""):
        self.fn, self.name = fn, name or getattr(fn, "__name__", "reward")

    def __call__(self, prompts, completions, answers):
        return [float(self.fn(c, a)) for c, a in zip(completions, answers)]


class CallTimeout(Exception):
    pass


class Bounded(PerSample):
    """A user function whose every call is cut off after ``timeout`` seconds (then it scores 0).

    The bound uses the interval timer of the main thread (Unix); elsewhere calls run unbounded.
    """

    def __init__(self, fn, name: str, timeout: float = 10.0):
        super().__init__(fn, name)
        self.timeout = timeout

    def _call(self, completion, answer) -> float:
        bounded = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        if not bounded:
            return float(self.fn(completion, answer))

        def expire(signum, frame):
            raise CallTimeout()

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            return float(self.fn(completion, answer))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def __call__(self, prompts, completions, answers):
        scores = []
        for c, a in zip(completions, answers):
            try:
                scores.append(self._call(c, a))
            except CallTimeout:
                print(f"divalign: warning: reward {self.name} ran over {self.timeout}s; scored 0", file=sys.stderr)
                scores.append(0.0)
            except Exception as exc:  # noqa: BLE001 (a user function's bug must not kill the run)
                print(f"divalign: warning: reward {self.name} raised {type(exc).__name__}: {exc}; scored 0",
                      file=sys.stderr)
                scores.append(0.0)
        return scores


class Weighted:
    """Σ_k w_k · reward_k."""

    def __init__(self, terms: list[tuple[float, Reward]]):
        self.terms = terms

    def __call__(self, prompts, completions, answers):
        total = [0.0] * len(completions)
        for weight, reward in self.terms:
            for i, value in enumerate(reward(prompts, completions, answers)):
                total[i] += weight * value
        return total


BUILTIN = {"numeric": numeric_reward, "exact": exact_reward, "partial": partial_credit}


def get(spec: str, timeout: float = 10.0) -> Reward:
    """The reward of a spec: one term or ``w1*term1 + w2*term2 …``."""
    terms = [t.strip() for t in spec.split("+")]
    if len(terms) == 1 and "*" not in terms[0]:
        return _term(terms[0], timeout)
    parsed = []
    for term in terms:
        weight, star, name = term.partition("*")
        if not star:
            weight, name = "1", term
        try:
            parsed.append((float(weight), _term(name.strip(), timeout)))
        except ValueError:
            raise UserError(f"reward '{spec}': '{term}' should be WEIGHT*REWARD (e.g. 0.5*exact)") from None
    return Weighted(parsed)


def _term(spec: str, timeout: float) -> Reward:
    if spec.startswith("rm:"):
        return RewardModelScorer(spec[3:])
    if ":" in spec:
        return Bounded(_import(spec), spec, timeout)
    if spec not in BUILTIN:
        raise UserError(f"unknown reward '{spec}' (expected one of: {', '.join(BUILTIN)}, rm:FOLDER or "
                        "module:function)")
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


def overlong_penalty(lengths: list[int], max_tokens: int, buffer: int, factor: float = 1.0) -> list[float]:
    """DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), added to the reward: 0 up to
    max_tokens − buffer tokens, then falling linearly to −factor at max_tokens (and −factor beyond)."""
    start = max_tokens - buffer
    return [0.0 if n <= start else -factor * min(1.0, (n - start) / buffer) for n in lengths]
