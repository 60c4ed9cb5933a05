"""Integer arithmetic: prompts like ``37+45=`` with answer ``82``; two or three operands.

The evaluation split is a fixed 10 % of all problems, chosen by a hash of the problem text, so it is disjoint
from every training batch and from the demonstrations whatever the seed. The reward is exact match.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

from divalign.data.prompts import Example
from divalign.errors import UserError
from divalign.rewards import PerSample
from divalign.verifiers import exact_reward


@dataclass
class ArithmeticConfig:
    """Shape of the arithmetic problems."""

    operands: str = "2"
    """Number of operands: 2, 3, or a comma-separated mix such as 2,3."""
    max_value: int = 99
    """Operands are drawn uniformly from 0..max_value."""
    operators: str = "+-"
    """Operators to use, any of + - *."""
    eval_per_mille: int = 100
    """Share of all problems (per thousand) reserved for evaluation."""

    def __post_init__(self):
        try:
            self.operand_counts = tuple(int(x) for x in str(self.operands).split(","))
        except ValueError:
            raise UserError(f"arithmetic.operands: expected numbers like 2 or 2,3 (got '{self.operands}')") from None
        if any(k < 2 for k in self.operand_counts):
            raise UserError("arithmetic.operands: each problem needs at least 2 operands")
        if not self.operators or set(self.operators) - set("+-*"):
            raise UserError(f"arithmetic.operators: expected a subset of '+-*' (got '{self.operators}')")
        if self.max_value < 1:
            raise UserError("arithmetic.max_value must be >= 1")
        if not 0 < self.eval_per_mille < 1000:
            raise UserError("arithmetic.eval_per_mille must be in 1..999")


def evaluate(values: list[int], ops: list[str]) -> int:
    """Value of values[0] ops[0] values[1] … with the usual precedence (* before + and -)."""
    terms, signs = [values[0]], []
    for op, v in zip(ops, values[1:]):
        if op == "*":
            terms[-1] *= v
        else:
            terms.append(v)
            signs.append(op)
    total = terms[0]
    for op, v in zip(signs, terms[1:]):
        total = total + v if op == "+" else total - v
    return total


class ArithmeticTask:
    name = "arithmetic"

    def __init__(self, config: ArithmeticConfig | None = None):
        self.config = config or ArithmeticConfig()
        self.reward = PerSample(exact_reward, "arithmetic")  #: batch reward: exact match of the answer

    def is_eval(self, prompt: str) -> bool:
        return zlib.crc32(prompt.encode()) % 1000 < self.config.eval_per_mille

    def _draw(self, rng: random.Random) -> Example:
        cfg = self.config
        count = rng.choice(cfg.operand_counts)
        values = [rng.randint(0, cfg.max_value) for _ in range(count)]
        ops = [rng.choice(cfg.operators) for _ in range(count - 1)]
        expr = str(values[0]) + "".join(op + str(v) for op, v in zip(ops, values[1:]))
        return Example(prompt=expr + "=", answer=str(evaluate(values, ops)))

    def _draw_split(self, rng: random.Random, held_out: bool) -> Example:
        while True:
            example = self._draw(rng)
            if self.is_eval(example.prompt) == held_out:
                return example

    def batch(self, step: int, size: int, seed: int = 0, round: int = 0) -> list[Example]:
        """Training prompts for ``step`` (and extra ``round`` of dynamic sampling): a pure function of its inputs."""
        rng = random.Random(f"arithmetic-train-{seed}-{step}" + (f"-{round}" if round else ""))
        return [self._draw_split(rng, held_out=False) for _ in range(size)]

    def demonstrations(self, count: int, seed: int = 0) -> list[Example]:
        """``count`` distinct training problems with their answers (for supervised warm-up)."""
        return self._distinct(count, random.Random(f"arithmetic-demos-{seed}"), held_out=False)

    def eval_set(self, count: int) -> list[Example]:
        """``count`` distinct held-out problems; the same list for every run."""
        return self._distinct(count, random.Random("arithmetic-eval"), held_out=True)

    @staticmethod
    def difficulty(example: Example) -> int:
        """Column carries and borrows of the problem worked left to right, plus 1 for each negative intermediate
        result (e.g. 12+34 → 0, 58+67 → 2, 40−61 → 1, 100−1 → 2). Reports accuracy on the hardest problems."""
        tokens = re.findall(r"[+*-]|\d+", example.prompt.rstrip("="))
        value, hard = int(tokens[0]), 0
        for op, b in zip(tokens[1::2], map(int, tokens[2::2])):
            if op == "*":
                value, hard = value * b, hard + len(str(abs(value))) * len(str(b))
                continue
            result = value + b if op == "+" else value - b
            big, small = (max(abs(value), b), min(abs(value), b))
            if (op == "+") == (value >= 0):  # magnitudes add: carries
                hard += sum((big % 10 ** (k + 1)) + (small % 10 ** (k + 1)) >= 10 ** (k + 1)
                            for k in range(len(str(big))))
            else:  # magnitudes subtract: borrows
                hard += sum((big % 10 ** (k + 1)) < (small % 10 ** (k + 1)) for k in range(len(str(big))))
            value = result
            hard += value < 0
        return hard

    def _distinct(self, count: int, rng: random.Random, held_out: bool) -> list[Example]:
        seen, out = set(), []
        attempts = 0
        while len(out) < count:
            example = self._draw_split(rng, held_out)
            attempts += 1
            if example.prompt not in seen:
                seen.add(example.prompt)
                out.append(example)
            elif attempts > 50 * count:
                raise UserError(f"arithmetic: cannot find {count} distinct problems of this shape")
        return out


class TaskPrompts:
    """Adapts a task to the ``batch(step, size)`` interface of prompt sources."""

    def __init__(self, task: ArithmeticTask, seed: int = 0):
        self.task, self.seed = task, seed

    def batch(self, step: int, size: int, round: int = 0) -> list[Example]:
        return self.task.batch(step, size, self.seed, round)
