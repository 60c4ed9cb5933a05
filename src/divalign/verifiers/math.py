"""The ``math`` verifier: gold answer and completion parsed as mathematics and compared for equivalence with
math-verify (https://github.com/huggingface/Math-Verify), which handles boxed answers with nested braces,
fractions, radicals, intervals, tuples and sets, percentages, degrees, thousands separators and text answers.

The gold answer is LaTeX or a plain expression, with or without ``$…$`` or ``\\boxed{…}``. The completion's
answer is its last boxed or final expression, as math-verify extracts it; a completion that writes its answer as bare LaTeX, without any math delimiter (``The answer is
\\frac{14}{3}``), is also read through what follows its last "answer is", or its last line.

Three forms math-verify does not read are rewritten first, in gold and completion alike: repeating decimals
(``1.1\\overline{6}`` → ``\\frac{105}{90}``), thin spaces between digit groups (``40\\,000`` → ``40000``) and
numbers set as text (``\\textbf{(073)}`` → ``073``). In both, GSM8K's final-answer marker ``####`` is obeyed: only
what follows it is read (its solutions write ``$4.00 + $2.00``, which would otherwise read as mathematics).
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


def _rewrite(text: str) -> str:
    """The forms math-verify does not read, rewritten into ones it does."""
    return _NUMBER_AS_TEXT.sub(r"\1", _THIN_SPACE.sub("", _REPEATING.sub(_as_fraction, text)))


def _one_symbol_per_name(parsed: list) -> list:
    """``parsed`` with every sympy symbol replaced by a plain one of its name. math-verify may give the same
    letter different assumptions in two answers (the ``i`` of ``\\frac{4}{5}i`` and of ``0.8i``), and sympy then
    treats them as two variables that never cancel."""
    import sympy

    return [item.xreplace({s: sympy.Symbol(s.name) for s in item.free_symbols if isinstance(s, sympy.Symbol)})
            if isinstance(item, sympy.Basic) else item for item in parsed]


def _parse_boxed(text: str) -> list:
    """math-verify's parse of ``text`` as one boxed answer, with the gold settings."""
    math_verify, extraction = _math_verify()
    return math_verify.parse(f"\\boxed{{{text}}}", extraction_config=extraction)


def parse_gold(answer: str | float) -> list:
    """The gold answer as math-verify's parsed form: an expression and the text it came from; empty when it
    cannot be read as mathematics (math-verify then keeps only the text, as with an unclosed ``\\frac{``)."""
    math_verify, extraction = _math_verify()
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = _rewrite(text.strip())
    parsed = math_verify.parse(text, extraction_config=extraction) if _DELIMITED.search(text) else _parse_boxed(text)
    return parsed if any(not isinstance(item, str) for item in parsed) else []


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


def math_reward(completion: str, answer: str | float) -> float:
    """1.0 when the completion's final answer is mathematically equivalent to the gold answer, else 0.0;
    ``ValueError`` when the gold answer cannot be parsed.

    Each further reading below is tried only when the ones before found no match, so each can only turn a 0 into
    a 1, and only for an answer math-verify finds equivalent: the completion as math-verify extracts it; the same
    with one variable per letter (:func:`_one_symbol_per_name`); the stated answer of a completion without math
    delimiters, both ways."""
    gold = parse_gold(answer)
    if not gold:
        raise ValueError(f"gold answer {str(answer).strip()[:80]!r} cannot be read as mathematics")
    math_verify = _math_verify()[0]
    if "####" in completion:  # GSM8K's final-answer marker: what follows it is the answer, whatever came before
        completion = completion.rsplit("####", 1)[1]
    completion = _rewrite(completion)
    stated = _stated_answer(completion)
    readings = (lambda: math_verify.parse(completion), lambda: _parse_boxed(stated) if stated else [])
    for read in readings:
        prediction = read()
        if prediction and (math_verify.verify(gold, prediction) or math_verify.verify(
                _one_symbol_per_name(gold), _one_symbol_per_name(prediction))):
            return 1.0
    return 0.0
