"""Partial credit: a fine-grained score in [0, 1] of how close an answer is (DaGRPO's default distinctiveness)."""

from __future__ import annotations

import difflib

from divalign.verifiers.numeric import extract_number, plain_number


def partial_credit(completion: str, answer) -> float:
    """1/(1 + |x − x*| / max(1, |x*|)) for numeric answers (1 when exact); string similarity otherwise."""
    gold, got = plain_number(answer), extract_number(completion)
    if gold is not None:
        if got is None:
            return 0.0
        return float(1.0 / (1.0 + abs(got - gold) / max(1, abs(gold))))
    return difflib.SequenceMatcher(None, completion.strip(), str(answer).strip()).ratio()
