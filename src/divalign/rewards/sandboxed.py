"""A reward computed out of process: a user's ``module:function`` or the ``math`` verifier, each call bounded in
time and isolated in a worker process (:mod:`divalign.sandbox`).

A call that raises, runs over its timeout or ends its process scores 0 and counts as failed; the batch's failures
are warned about on the console, and when more than ``max_failures`` of a batch's calls fail the run stops
(:class:`~divalign.errors.RunFailed`). A return that is not a finite number (a string, None, NaN, inf) stops the
run naming the function and the completion, or, with ``invalid="zero"``, scores 0 and counts as failed.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter

from divalign.errors import RunFailed
from divalign.rewards.base import Reward
from divalign.sandbox import Pool
from divalign.tracking import warn


def finite_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class Sandboxed(Reward):
    """``module:function(completion, answer) -> float`` in ``workers`` processes, each call bounded by ``timeout``."""

    def __init__(self, target: str, name: str, timeout: float, workers: int, max_failures: float, invalid: str,
                 needs_answers: bool = False):
        self.target, self.name, self.needs_answers = target, name, needs_answers
        self.pool = Pool(target, workers, timeout)
        self.max_failures, self.invalid = max_failures, invalid

    def score(self, prompts, completions, answers):
        outcomes = self.pool.map([(c, a) for c, a in zip(completions, answers)])
        values, reasons = [], Counter()
        for index, outcome in enumerate(outcomes):
            if outcome.error is None and finite_number(outcome.value):
                values.append(float(outcome.value))
                continue
            if outcome.error is None:
                reason = f"returned {outcome.value!r} ({type(outcome.value).__name__}), not a finite number"
                if self.invalid == "error":
                    raise RunFailed(f"reward {self.name} {reason} for completion {index} "
                                    f"({completions[index][:60]!r}); --reward-invalid zero scores such returns 0")
            else:
                reason = outcome.error
            reasons[reason] += 1
            values.append(0.0)
        self.failures = sum(reasons.values())
        if self.failures:
            summary = "; ".join(f"{count} {reason}" for reason, count in reasons.most_common(3))
            if self.failures > self.max_failures * len(outcomes):
                raise RunFailed(f"reward {self.name}: {self.failures} of {len(outcomes)} calls failed ({summary}), more "
                                f"than the {self.max_failures:.0%} --reward-max-failures allows")
            warn(f"reward {self.name}: {self.failures} of {len(outcomes)} calls failed and scored 0 ({summary})")
        return values

    def close(self) -> None:
        self.pool.close()
