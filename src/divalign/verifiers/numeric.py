"""Verifiers for answers that are plain numbers (GSM8K style) or exact strings.

A completion's final answer is, in order of preference: the text after its last ``####``, the text after its
last "answer is", the content of its last ``\\boxed{…}``, or else the whole completion; the last number in that
text is compared with the gold number exactly (as a fraction, so 18, 18.0 and 18.00 agree and 3/4 equals 0.75;
commas, dollar signs and trailing periods are ignored).

The gold answer must be a plain number — a number written alone (``18``, ``-3.5``, ``3/4``, ``1,000``) or after
GSM8K's ``####`` — and :func:`gold_number` refuses anything else (LaTeX such as ``\\frac{1}{2}`` or an interval):
comparing last numbers would score ``\\frac{15}{3}`` right for ``\\frac{14}{3}``. Mathematical answers take the
``math`` verifier (:mod:`divalign.verifiers.math`). Both: docs/algorithms.md#verifiable-rewards.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
#: A gold answer that is a plain number: optional sign and dollar sign, digits with thousands commas, decimals or a
#: fraction, an optional trailing period.
_PLAIN = re.compile(r"\s*\$?\s*(-?\$?\s*(?:\d[\d,]*(?:\.\d+)?(?:/\d+)?|\.\d+))\s*\.?\s*")


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
    cleaned = token.replace(",", "").replace("$", "").replace(" ", "")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(text: str) -> Fraction | None:
    """The final answer of ``text`` as an exact number, or ``None`` if it holds no number."""
    numbers = _NUMBER.findall(final_answer_segment(text))
    return parse_number(numbers[-1]) if numbers else None


def plain_number(answer: str | float) -> Fraction | None:
    """A gold answer as a number when it is a plain number (or GSM8K's text after ``####``), else None."""
    if isinstance(answer, bool) or not isinstance(answer, (int, float, str)):
        return None
    if isinstance(answer, (int, float)):
        return Fraction(str(answer))
    text = answer.rsplit("####", 1)[1] if "####" in answer else answer
    match = _PLAIN.fullmatch(text)
    return parse_number(match.group(1)) if match else None


def gold_number(answer: str | float) -> Fraction:
    """:func:`plain_number`, with ``ValueError`` when the gold answer is not a plain number."""
    number = plain_number(answer)
    if number is None:
        raise ValueError(f"gold answer {str(answer).strip()[:80]!r} is not a plain number (the numeric reward "
                         "compares numbers; use the math reward for mathematical answers)")
    return number


def numeric_reward(completion: str, answer: str | float) -> float:
    """1.0 when the completion's final number equals the gold number, else 0.0."""
    gold = gold_number(answer)
    got = extract_number(completion)
    return 1.0 if got is not None and got == gold else 0.0


def exact_reward(completion: str, answer: str | float) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly the answer."""
    return 1.0 if completion.strip() == str(answer).strip() else 0.0
