"""The ``math`` verifier: gold answer and completion parsed as mathematics and compared for equivalence with
math-verify (https://github.com/huggingface/Math-Verify), which handles boxed answers with nested braces,
fractions, radicals, intervals, tuples and sets, percentages, degrees, thousands separators and text answers.

The gold answer is LaTeX or a plain expression, with or without ``$…$`` or ``\\boxed{…}``. The completion's
answer is its last boxed or final expression, as math-verify extracts it; a completion that writes its answer as
bare LaTeX, without any math delimiter (``The answer is \\frac{14}{3}``), is also read through what follows its
last "answer is", or its last line; where a percent sign appears, both are also compared without it.

Forms math-verify misreads are rewritten first, in gold and completion alike: repeating decimals
(``1.1\\overline{6}`` → ``\\frac{105}{90}``), thin spaces between digit groups (``40\\,000`` → ``40000``), numbers
set as text (``\\textbf{(073)}`` → ``073``), mixed numbers (``2\\frac{1}{4}`` → ``(2+\\frac{1}{4})``) and numerals
in a base (``1011_2`` → ``11``). GSM8K's final-answer marker ``####`` is obeyed in both: only what follows it is
read (its solutions write ``$4.00 + $2.00``, which would otherwise read as mathematics).

What it still misses is measured in BENCHMARKS.md ("math reward") and listed in docs/algorithms.md#math-reward.

math-verify bounds each of its own steps with a timer; divalign runs this verifier in worker processes
(:mod:`divalign.sandbox`) so that no expression can hang a run.
"""

from __future__ import annotations

import functools
import re
import warnings

#: Mathematics the text delimits itself: an unescaped ``$`` (``\\$`` is a dollar sign), ``\\(``, ``\\[`` or a box.
_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")
#: A repeating decimal, ``a.b\\overline{c}``.
_REPEATING = re.compile(r"(\d*)\.(\d*)\\overline\{(\d+)\}")
#: A thin space between groups of three digits, ``40\\,000``.
_THIN_SPACE = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
#: A number set as text, ``\\textbf{(073)}`` (AoPS writes AIME answers so; math-verify keeps them as text).
_NUMBER_AS_TEXT = re.compile(r"\\text(?:bf|rm)?\{\s*\(?\s*(\d+(?:\.\d+)?)\s*\)?\s*\}")
#: A numeral with its base as a subscript, ``1011_2`` or ``A5_{12}`` (digits and capitals, at least one digit).
_BASE_N = re.compile(r"(?<![\w\\])([0-9A-Z]*[0-9][0-9A-Z]*)_(?:\{(\d{1,2})\}|(\d{1,2}))")
#: A mixed number, ``2\\frac{1}{4}``: a whole number (not an exponent, subscript or digit of something longer)
#: right before a fraction of two whole numbers.
_MIXED = re.compile(r"(?<![\w^_.{}\\])(\d+)\s*\\[dt]?frac\{(\d+)\}\{(\d+)\}")
#: A percent sign, with the spacing LaTeX may put before it.
_PERCENT = re.compile(r"(?:\s|\\[,;!])*\\?%")
#: What a completion writes before its final answer.
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*", re.IGNORECASE)


@functools.cache
def _math_verify():
    """math-verify and the gold extraction settings, imported on first use (sympy takes a moment to load)."""
    import math_verify
    from sympy.utilities.exceptions import SymPyDeprecationWarning

    # sympy warns about deprecated forms while math-verify tries readings of odd completions; the warnings say
    # nothing about the answer and would flood a run's output.
    warnings.filterwarnings("ignore", category=SymPyDeprecationWarning)
    gold = [math_verify.LatexExtractionConfig(boxed_match_priority=0), math_verify.ExprExtractionConfig()]
    return math_verify, gold


def _as_fraction(match: re.Match) -> str:
    """``a.b\\overline{c}`` as the fraction it equals: (a·10^|b|·(10^|c|−1) + b·(10^|c|−1) + c) / (10^|b|·(10^|c|−1))."""
    whole, fixed, period = match.groups()
    nines = 10 ** len(period) - 1
    denominator = 10 ** len(fixed) * nines
    numerator = int(whole or 0) * denominator + int(fixed or 0) * nines + int(period)
    return f"\\frac{{{numerator}}}{{{denominator}}}"


def _in_decimal(match: re.Match) -> str:
    """``1011_2`` as its value, ``11``; left as written when a digit is not one of the base's."""
    digits, base = match.group(1), int(match.group(2) or match.group(3))
    try:
        return str(int(digits, base)) if 2 <= base <= 36 else match.group(0)
    except ValueError:
        return match.group(0)


def _rewrite(text: str) -> str:
    """The forms math-verify does not read, rewritten into ones it does."""
    text = _REPEATING.sub(_as_fraction, text)
    text = _THIN_SPACE.sub("", text)
    text = _NUMBER_AS_TEXT.sub(r"\1", text)
    text = _MIXED.sub(r"(\1+\\frac{\2}{\3})", text)
    return _BASE_N.sub(_in_decimal, text)


def _one_symbol_per_name(parsed: list) -> list:
    """``parsed`` with every sympy symbol replaced by a plain one of its name. math-verify may give the same
    letter different assumptions in two answers (the ``i`` of ``\\frac{4}{5}i`` and of ``0.8i``), and sympy then
    treats them as two variables that never cancel."""
    import sympy

    return [item.xreplace({s: sympy.Symbol(s.name) for s in item.free_symbols if isinstance(s, sympy.Symbol)})
            if isinstance(item, sympy.Basic) else item for item in parsed]


def _after_marker(text: str) -> str:
    """What follows GSM8K's final-answer marker ``####``, or the whole text without one."""
    return text.rsplit("####", 1)[1] if "####" in text else text


def _gold_text(answer: str | float) -> str:
    return _rewrite(_after_marker(str(answer)).strip())


def _parse_answer(text: str) -> list:
    """An answer parsed with the gold settings: as written when it delimits its mathematics, else as one boxed
    answer; empty when math-verify can only keep it as text."""
    math_verify, extraction = _math_verify()
    parsed = math_verify.parse(text if _DELIMITED.search(text) else f"\\boxed{{{text}}}",
                               extraction_config=extraction)
    return parsed if any(not isinstance(item, str) for item in parsed) else []


@functools.lru_cache(maxsize=4096)  # a step scores each gold answer once per generation
def _parse_gold_text(text: str) -> list:
    """:func:`_parse_answer`, cached: callers must not change the list."""
    return _parse_answer(text)


def parse_gold(answer: str | float) -> list:
    """The gold answer as math-verify's parsed form: an expression and the text it came from; empty when it
    cannot be read as mathematics (math-verify then keeps only the text, as with an unclosed ``\\frac{``)."""
    return _parse_gold_text(_gold_text(answer))


def _stated_answer(completion: str) -> str | None:
    """The answer of a completion without math delimiters: what follows the last "answer is" of its last line,
    else that line, without a closing period. None for a completion with delimiters (math-verify reads those)."""
    if _DELIMITED.search(completion):
        return None
    lines = [line for line in completion.splitlines() if line.strip()]
    if not lines:
        return None
    stated = _ANSWER_IS.split(lines[-1])[-1].strip().rstrip(".").strip()
    return stated or None


def _readings(gold_text: str, completion: str):
    """(gold, prediction) parses to compare, in order: the completion as math-verify extracts it; for a
    completion without math delimiters, its stated answer as one boxed answer; and where a percent sign appears,
    both again with percent signs removed (MATH's convention: ``12.5\\%`` and ``12.5`` are one answer, which
    math-verify accepts for whole numbers only)."""
    math_verify = _math_verify()[0]
    variants = [(gold_text, completion)]
    if "%" in gold_text or "%" in completion:
        variants.append((_PERCENT.sub("", gold_text), _PERCENT.sub("", completion)))
    for gold, text in variants:
        parsed_gold = _parse_gold_text(gold)
        if not parsed_gold:
            continue
        yield parsed_gold, math_verify.parse(text)
        stated = _stated_answer(text)
        if stated:
            yield parsed_gold, _parse_answer(stated)


def math_reward(completion: str, answer: str | float) -> float:
    """1.0 when the completion's final answer is mathematically equivalent to the gold answer, else 0.0;
    ``ValueError`` when the gold answer cannot be parsed.

    Each reading of :func:`_readings` after the first is tried only when the ones before found no match, so each
    can only turn a 0 into a 1, and only for an answer math-verify finds equivalent; each is compared as parsed
    and with one variable per letter (:func:`_one_symbol_per_name`)."""
    gold_text = _gold_text(answer)
    if not _parse_gold_text(gold_text):
        raise ValueError(f"gold answer {str(answer).strip()[:80]!r} cannot be read as mathematics")
    math_verify = _math_verify()[0]
    for gold, prediction in _readings(gold_text, _rewrite(_after_marker(completion))):
        if prediction and (math_verify.verify(gold, prediction) or math_verify.verify(
                _one_symbol_per_name(gold), _one_symbol_per_name(prediction))):
            return 1.0
    return 0.0
