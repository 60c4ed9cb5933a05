"""Watching a run step by step: a run whose updates keep being left out stops, and signs of collapse are said
out loud.

* An optimizer update whose loss or gradient norm is not finite is left out (:class:`~divalign.trainers.optim.
  Optimization`); each such step is warned about and counted (``skipped_steps``), and after ``max_consecutive_skips``
  steps in a row without an update the run stops (:class:`~divalign.errors.RunFailed`).
* Collapse warnings, printed when a condition starts and logged in the step's row (``warning``): the next-token
  entropy reaching its maximum ln |V| after having been lower (the policy samples uniformly), the gradient norm
  exactly 0 for :data:`ZERO_GRAD_STEPS` steps (no learning signal), and the KL to the reference jumping above
  :data:`KL_JUMP` times its recent median (and above 1 nat).
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from divalign.errors import RunFailed
from divalign.tracking import warn

#: Consecutive steps with a gradient norm of exactly 0 before warning.
ZERO_GRAD_STEPS = 3
#: A KL this many times its median over the last :data:`KL_WINDOW` steps (and above 1 nat) is a jump.
KL_JUMP = 10.0
KL_WINDOW = 20
#: Share of ln |V| above which the entropy counts as at its maximum.
ENTROPY_MAX_SHARE = 0.98


class RunWatch:
    """Sees every step's row (and adds ``skipped_steps`` and ``warning`` to it); prints its warnings when
    ``console`` (the process that shows the run's progress)."""

    def __init__(self, max_consecutive_skips: int, vocab_size: int | None = None, console: bool = True):
        self.max_consecutive_skips = max_consecutive_skips
        self.console = console
        self.max_entropy = math.log(vocab_size) if vocab_size and vocab_size > 1 else None
        self.skipped = self.consecutive = self.zero_grads = 0
        self.entropy_was_low = False
        self.kl_history: deque[float] = deque(maxlen=KL_WINDOW)
        self.active: set[str] = set()

    def see(self, row: dict) -> None:
        step = row.get("step")
        if row.get("skipped_updates"):
            self.skipped += 1
            self.consecutive += 1
            row["skipped_steps"] = self.skipped
            self._warn(f"step {step}: update left out ({row.get('skip_reason', 'non-finite')}); the weights are "
                       "unchanged")
            if self.consecutive >= self.max_consecutive_skips:
                raise RunFailed(f"the run stopped at step {step}: {self.consecutive} steps in a row without an update "
                                f"({row.get('skip_reason', 'non-finite')}); the last checkpoint is kept and no final "
                                "model is written (lower the learning rate, or check the reward and the data)")
        else:
            self.consecutive = 0
        row["skipped_steps"] = self.skipped
        warnings = [message for key, message in self._collapse(row) if self._starts(key, message is not None)]
        if warnings:
            row["warning"] = "; ".join(warnings)
            for message in warnings:
                self._warn(f"step {step}: {message}")

    def _warn(self, message: str) -> None:
        if self.console:
            warn(message)

    def _starts(self, key: str, on: bool) -> bool:
        """Whether condition ``key`` begins now (warn once per occurrence, again only after it has cleared)."""
        if not on:
            self.active.discard(key)
            return False
        started = key not in self.active
        self.active.add(key)
        return started

    def _collapse(self, row: dict):
        entropy = row.get("entropy")
        if entropy is not None and self.max_entropy is not None and math.isfinite(entropy):
            at_max = entropy >= ENTROPY_MAX_SHARE * self.max_entropy
            self.entropy_was_low |= not at_max
            yield "entropy", (f"next-token entropy {entropy:.3g} is at its maximum ln|V| = {self.max_entropy:.3g}: "
                              "the policy samples uniformly (collapsed)") if at_max and self.entropy_was_low else None
        grad_norm = row.get("grad_norm")
        if grad_norm is not None:
            self.zero_grads = self.zero_grads + 1 if grad_norm == 0.0 else 0
            yield "grad", (f"gradient norm exactly 0 for {self.zero_grads} steps: no learning signal (all rewards "
                           "equal within each group?)") if self.zero_grads >= ZERO_GRAD_STEPS else None
        kl = row.get("kl")
        if kl is not None and math.isfinite(kl):
            recent = statistics.median(self.kl_history) if len(self.kl_history) >= KL_WINDOW // 2 else None
            self.kl_history.append(kl)
            jumped = recent is not None and kl > 1.0 and kl > KL_JUMP * max(recent, 1e-3)
            yield "kl", (f"KL to the reference jumped to {kl:.3g} (recent median {recent:.3g})" if jumped else None)
