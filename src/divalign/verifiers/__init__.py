"""Verifiers: pure functions ``verifier(completion, answer) -> float`` that check a completion against a gold
answer. They import nothing heavy, so a worker process (:mod:`divalign.sandbox`) can load one quickly.

* ``numeric`` — the completion's final number equals the gold answer, a plain number (GSM8K);
* ``exact`` — the stripped completion equals the answer;
* ``partial`` — partial credit in [0, 1];
* ``math`` — mathematical equivalence with math-verify (competition math).
"""

from divalign.verifiers.numeric import exact_reward, numeric_reward
from divalign.verifiers.partial import partial_credit

#: Verifiers by name, and the ``module:function`` a worker process imports for the ones run out of process.
IN_PROCESS = {"numeric": numeric_reward, "exact": exact_reward, "partial": partial_credit}
OUT_OF_PROCESS = {"math": "divalign.verifiers.math:math_reward"}

__all__ = ["IN_PROCESS", "OUT_OF_PROCESS", "exact_reward", "numeric_reward", "partial_credit"]
