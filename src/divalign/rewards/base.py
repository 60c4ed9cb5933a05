"""What a reward is: a batch scorer ``reward(prompts, completions, answers) -> list[float]``, and the rewards built
from functions of one completion."""

from __future__ import annotations

import math
from collections.abc import Callable

from divalign.errors import RunFailed


class Reward:
    """Base of every reward. ``failures`` is how many calls of the last batch failed (and scored 0); a reward
    that cannot fail leaves it at 0. ``needs_answers`` says whether it reads the gold answers."""

    name: str = "reward"
    needs_answers: bool = True
    failures: int = 0

    def __call__(self, prompts: list[str], completions: list[str], answers: list[str]) -> list[float]:
        values = self.score(prompts, completions, answers)
        for index, value in enumerate(values):
            if not math.isfinite(value):
                raise RunFailed(f"reward {self.name} gave {value} for completion {index} ({completions[index][:60]!r}); "
                                "a reward must be a finite number")
        return values

    def score(self, prompts: list[str], completions: list[str], answers: list[str]) -> list[float]:
        raise NotImplementedError


class PerSample(Reward):
    """A reward from a function of one (completion, answer), run in this process (for trusted, fast functions)."""

    def __init__(self, fn: Callable[[str, object], float], name: str = "", needs_answers: bool = True):
        self.fn, self.name, self.needs_answers = fn, name or getattr(fn, "__name__", "reward"), needs_answers

    def score(self, prompts, completions, answers):
        return [float(self.fn(c, a)) for c, a in zip(completions, answers)]


class Weighted(Reward):
    """Σ_k w_k · reward_k."""

    def __init__(self, terms: list[tuple[float, Reward]]):
        self.terms = terms
        self.name = " + ".join(f"{w:g}*{r.name}" for w, r in terms)
        self.needs_answers = any(r.needs_answers for _, r in terms)

    def score(self, prompts, completions, answers):
        total = [0.0] * len(completions)
        for weight, reward in self.terms:
            for i, value in enumerate(reward(prompts, completions, answers)):
                total[i] += weight * value
        self.failures = sum(r.failures for _, r in self.terms)
        return total


def overlong_penalty(lengths: list[int], max_tokens: int, buffer: int, factor: float = 1.0) -> list[float]:
    """DAPO's soft overlong punishment (arXiv 2503.14476, Eq. 13), added to the reward: 0 up to
    max_tokens − buffer tokens, then falling linearly to −factor at max_tokens (and −factor beyond)."""
    start = max_tokens - buffer
    return [0.0 if n <= start else -factor * min(1.0, (n - start) / buffer) for n in lengths]
