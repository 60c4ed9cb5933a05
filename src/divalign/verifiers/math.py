"""The ``math`` verifier: gold answer and completion parsed as mathematics and compared for equivalence with
math-verify (https://github.com/huggingface/Math-Verify), which handles boxed answers with nested braces,
fractions, radicals, intervals, tuples and sets, percentages, degrees, thousands separators and text answers.

The gold answer is LaTeX or a plain expression, with or without ``$…$`` or ``\\boxed{…}`` (GSM8K's text after
``####`` is taken alone); the completion's answer is its last boxed or final expression, as math-verify extracts
it. math-verify bounds each of its own steps with a timer; divalign runs this verifier in worker processes
(:mod:`divalign.sandbox`) so that no expression can hang a run.
"""

from __future__ import annotations

import functools
import warnings


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


def parse_gold(answer: str | float) -> list:
    """The gold answer as math-verify's parsed form: an expression and the text it came from; empty when it
    cannot be read as mathematics (math-verify then keeps only the text, as with an unclosed ``\\frac{``)."""
    math_verify, extraction = _math_verify()
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = text.strip()
    if "$" not in text and "\\boxed" not in text:
        text = f"\\boxed{{{text}}}"
    parsed = math_verify.parse(text, extraction_config=extraction)
    return parsed if any(not isinstance(item, str) for item in parsed) else []


def math_reward(completion: str, answer: str | float) -> float:
    """1.0 when the completion's final answer is mathematically equivalent to the gold answer, else 0.0;
    ``ValueError`` when the gold answer cannot be parsed."""
    gold = parse_gold(answer)
    if not gold:
        raise ValueError(f"gold answer {str(answer).strip()[:80]!r} cannot be read as mathematics")
    math_verify = _math_verify()[0]
    return 1.0 if math_verify.verify(gold, math_verify.parse(completion)) else 0.0
