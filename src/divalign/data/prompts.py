"""Prompt datasets for online RL: (prompt, answer) examples, served in a seeded order.

``batch(step, size, round)`` is a pure function of (seed, step, round), so a resumed run sees exactly the prompts
an uninterrupted one would, with no iterator state to save. Round 0 is the step's batch; rounds 1, 2, … are the
extra prompts dynamic sampling asks for, drawn from a separate seeded order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from divalign.data.order import EpochOrder
from divalign.data.records import read_records, require_fields


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


class DatasetPrompts:
    """A finite list of examples, reshuffled every epoch with a seeded permutation."""

    #: Extra rounds a step may ask for (dynamic sampling); rounds index a separate order.
    MAX_ROUNDS = 64

    def __init__(self, examples: list[Example], seed: int = 0):
        self.examples = examples
        self.order = EpochOrder(len(examples), f"prompts-{seed}")
        self.extra = EpochOrder(len(examples), f"prompts-extra-{seed}")

    def batch(self, step: int, size: int, round: int = 0) -> list[Example]:
        if round == 0:
            return [self.examples[i] for i in self.order.take(step * size, size)]
        start = (step * self.MAX_ROUNDS + round - 1) * size
        return [self.examples[i] for i in self.extra.take(start, size)]


def read_prompt_file(
    path: str | os.PathLike, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[Example]:
    """Read a file of prompts with gold answers (JSONL, JSON, CSV or Parquet; GSM8K: ``--prompt-field question``)."""
    records = read_records(path)
    require_fields(records, {prompt_field: str, answer_field: (str, int, float)})
    return [Example(prompt=r.data[prompt_field], answer=str(r.data[answer_field])) for r in records]
