"""Reward specs: the text of ``--reward`` turned into a :class:`~divalign.rewards.base.Reward`.

A spec is one term or a weighted sum of terms, ``0.7*exact + 0.3*rm:runs/rm/model``. Terms:

* ``numeric``, ``exact``, ``partial`` — verifiers run in this process (:mod:`divalign.verifiers`); ``math`` —
  mathematical equivalence with math-verify, run out of process;
* ``rm:FOLDER`` — a trained reward model (:mod:`divalign.rewards.model`);
* ``module:function`` — a user function ``function(completion, answer) -> float`` run out of process, each call
  bounded (:mod:`divalign.rewards.sandboxed`); the current directory is importable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from divalign.data.prompts import Example
from divalign.errors import UserError
from divalign.rewards.base import PerSample, Reward, Weighted
from divalign.rewards.model import RewardModelScorer
from divalign.rewards.sandboxed import Sandboxed
from divalign.sandbox import import_function
from divalign.verifiers import IN_PROCESS, OUT_OF_PROCESS
from divalign.verifiers.math import parse_gold
from divalign.verifiers.numeric import plain_number

INVALID = ("error", "zero")


@dataclass
class RewardOptions:
    """How rewards that run out of process (module:function, math) are run."""

    reward_timeout: float = 10.0
    """Seconds a call of a reward run out of process (module:function, math) may take; past it the call is killed,
    scores 0 and counts as failed."""
    reward_workers: int = 0
    """Worker processes for rewards run out of process (0: one per CPU core)."""
    reward_max_failures: float = 0.5
    """Share of a step's reward calls that may fail (raise, time out, exit) before the run stops; failed calls
    score 0."""
    reward_invalid: str = "error"
    """A reward returning something other than a finite number: error (stop the run, naming the function and the
    completion) or zero (score 0 and count the call as failed)."""

    def __post_init__(self):
        if not (math.isfinite(self.reward_timeout) and self.reward_timeout > 0):
            raise ValueError(f"reward_timeout must be a number of seconds > 0 (got {self.reward_timeout})")
        if self.reward_workers < 0:
            raise ValueError(f"reward_workers must be >= 0 (got {self.reward_workers})")
        if not 0 <= self.reward_max_failures <= 1:
            raise ValueError(f"reward_max_failures must be in [0, 1] (got {self.reward_max_failures})")
        if self.reward_invalid not in INVALID:
            raise ValueError(f"reward_invalid: expected one of {', '.join(INVALID)} (got '{self.reward_invalid}')")
        following = getattr(super(), "__post_init__", None)  # the next option group of a config that has this one
        if following is not None:
            following()


def get(spec: str, options: RewardOptions | None = None) -> Reward:
    """The reward of a spec: one term or ``w1*term1 + w2*term2 …``; a one-line :class:`UserError` for a spec
    that names nothing usable."""
    options = options or RewardOptions()
    terms = [t.strip() for t in spec.split("+")]
    if len(terms) == 1 and "*" not in terms[0]:
        return _term(terms[0], options)
    parsed = []
    for term in terms:
        weight, star, name = term.partition("*")
        if not star:
            weight, name = "1", term
        try:
            value = float(weight)
        except ValueError:
            raise UserError(f"reward '{spec}': '{term}' should be WEIGHT*REWARD (e.g. 0.5*exact)") from None
        if not math.isfinite(value):
            raise UserError(f"reward '{spec}': the weight of '{term}' must be a finite number")
        parsed.append((value, _term(name.strip(), options)))
    return Weighted(parsed)


def _term(spec: str, options: RewardOptions) -> Reward:
    if spec.startswith("rm:"):
        return RewardModelScorer(spec[3:], device=getattr(options, "device", "cpu"))
    if spec in IN_PROCESS:
        return PerSample(IN_PROCESS[spec], spec)
    if spec in OUT_OF_PROCESS:
        return _sandboxed(OUT_OF_PROCESS[spec], spec, options, needs_answers=True)
    if ":" in spec:
        try:
            import_function(spec)
        except ImportError as exc:
            raise UserError(f"reward '{spec}': cannot import module '{spec.partition(':')[0]}' ({exc})") from None
        except (AttributeError, TypeError) as exc:
            raise UserError(f"reward '{spec}': {exc}") from None
        return _sandboxed(spec, spec, options, needs_answers=False)
    raise UserError(f"unknown reward '{spec}' (expected one of: {', '.join([*IN_PROCESS, *OUT_OF_PROCESS])}, "
                    "rm:FOLDER or module:function)")


def _sandboxed(target: str, name: str, options: RewardOptions, needs_answers: bool) -> Sandboxed:
    workers = options.reward_workers or os.cpu_count() or 1
    return Sandboxed(target, name, options.reward_timeout, workers, options.reward_max_failures,
                     options.reward_invalid, needs_answers)


def verifiers_of(spec: str) -> set[str]:
    """The built-in verifiers a spec uses (they read the gold answers)."""
    names = {term.partition("*")[2].strip() if "*" in term else term.strip() for term in spec.split("+")}
    return names & {*IN_PROCESS, *OUT_OF_PROCESS}


def check_answers(spec: str, examples: list[Example]) -> None:
    """Before any model loads: every example has the gold answer the spec's verifiers read, in a form they read
    (a plain number for ``numeric``, mathematics for ``math``); a one-line error naming the first that has not."""
    verifiers = verifiers_of(spec)
    for ex in examples if verifiers else []:
        if not ex.answer.strip():
            raise UserError(f"{ex.where}: no gold answer, and the reward '{spec}' checks one")
        if "numeric" in verifiers and plain_number(ex.answer) is None:
            raise UserError(f"{ex.where}: the gold answer {ex.answer.strip()[:60]!r} is not a plain number, which the "
                            "numeric reward compares; use --reward math for mathematical answers")
        if "math" in verifiers and not parse_gold(ex.answer):
            raise UserError(f"{ex.where}: the gold answer {ex.answer.strip()[:60]!r} cannot be read as mathematics "
                            "(the math reward)")
