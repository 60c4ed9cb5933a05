"""Prompt datasets for online RL: (prompt, answer) examples, served in a seeded order.

Files hold TRL's prompt-only format (``prompt``, a string or a conversation rendered with the chat template) and,
for rewards that check an answer, a gold ``answer``.

``batch(step, size, round)`` is a pure function of (seed, step, round), so a resumed run sees exactly the prompts
an uninterrupted one would, with no iterator state to save. Round 0 is the step's batch; rounds 1, 2, … are the
extra prompts dynamic sampling asks for, drawn from a separate seeded order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from divalign.data.chat import Text, read_text, render
from divalign.data.order import EpochOrder
from divalign.data.records import read_records
from divalign.errors import UserError


@dataclass(frozen=True)
class Example:
    prompt: Text
    answer: str
    templated: bool = False  #: the prompt comes from the chat template
    where: str = field(default="", compare=False)  #: file and line, for messages


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


def read_prompt_file(path: str | os.PathLike, prompt_field: str = "prompt", answer_field: str = "answer",
                     answers: bool = True) -> list[Example]:
    """Read a file of prompts (JSONL, JSON, CSV or Parquet; GSM8K: ``--prompt-field question``), with a gold answer
    each when ``answers`` (else their answers are read when present, "" when not)."""
    out = []
    for r in read_records(path):
        if prompt_field not in r.data:
            raise UserError(f"{r.where}: missing field '{prompt_field}' (the prompt)")
        prompt = read_text(r.data[prompt_field], r.where, prompt_field)
        answer = r.data.get(answer_field)
        if answer is None and answers:
            raise UserError(f"{r.where}: missing field '{answer_field}' (the gold answer the reward checks)")
        if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
            raise UserError(f"{r.where}: field '{answer_field}' must be str or a number, got {type(answer).__name__}")
        if isinstance(answer, str) and not answer.strip() and answers:
            raise UserError(f"{r.where}: field '{answer_field}' is empty")
        out.append(Example(prompt, "" if answer is None else str(answer), where=r.where))
    return out


def render_examples(tokenizer, examples: list[Example]) -> list[Example]:
    """Every prompt as text (conversations through the chat template, with the generation prompt)."""
    out = []
    for ex in examples:
        rendered = render(tokenizer, ex.prompt, None, ex.where)
        out.append(Example(rendered.prompt, ex.answer, rendered.templated, ex.where))
    return out
