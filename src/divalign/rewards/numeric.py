"""Verifiable rewards for answers that are numbers (GSM8K style) or exact strings.

A completion's final answer is, in order of preference: the text after its last ``####``, the text after its
last "answer is", the content of its last ``\\boxed{…}``, or else the whole completion; the last number in that
text is compared with the gold number exactly (as a fraction, so 18, 18.0 and 18.00 agree and 3/4 equals 0.75;
commas, dollar signs and trailing periods are ignored).
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def final_answer_segment(text: str) -> str:
    if "####" in text:
        return text.rsplit("####", 1)[1]
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        return text[matches[-1].end() :]
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1]
    return text


def parse_number(token: str) -> Fraction | None:
    cleaned = token.replace(",", "")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(text: str) -> Fraction | None:
    """The final answer of ``text`` as an exact number, or ``None`` if it holds no number."""
    numbers = _NUMBER.findall(final_answer_segment(text))
    return parse_number(numbers[-1]) if numbers else None


def gold_number(answer: str | float) -> Fraction | None:
    """The gold number: for GSM8K the text after ``####``; plain numbers are taken as they are."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, (int, float)):
        return Fraction(str(answer))
    return extract_number(answer)


def numeric_reward(completion: str, answer: str | float) -> float:
    """1.0 when the completion's final number equals the gold number, else 0.0."""
    gold = gold_number(answer)
    got = extract_number(completion)
    return 1.0 if gold is not None and got is not None and got == gold else 0.0


def exact_reward(completion: str, answer: str | float) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly the answer."""
    return 1.0 if completion.strip() == str(answer).strip() else 0.0
