"""Prompt datasets for online RL: (prompt, answer) examples, served in a seeded order.

``batch(step, size)`` is a pure function of (seed, step), so a resumed run sees exactly the prompts an
uninterrupted one would, with no iterator state to save.
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

    def __init__(self, examples: list[Example], seed: int = 0):
        self.examples = examples
        self.order = EpochOrder(len(examples), f"prompts-{seed}")

    def batch(self, step: int, size: int) -> list[Example]:
        return [self.examples[i] for i in self.order.take(step * size, size)]


def read_prompt_file(
    path: str | os.PathLike, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[Example]:
    """Read a file of prompts with gold answers (JSONL, JSON, CSV or Parquet; GSM8K: ``--prompt-field question``)."""
    records = read_records(path)
    require_fields(records, {prompt_field: str, answer_field: (str, int, float)})
    return [Example(prompt=r.data[prompt_field], answer=str(r.data[answer_field])) for r in records]
