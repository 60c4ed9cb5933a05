"""The math reward: equivalent forms of a gold answer score 1 and near misses 0, on written MATH-style cases and on
the public competition data; the numeric reward refuses what it cannot compare. Figures: BENCHMARKS.md ("Math
reward")."""

import json
from pathlib import Path

import pytest

from divalign.rewards import RewardOptions, get
from divalign.verifiers.math import math_reward, parse_gold
from divalign.verifiers.numeric import plain_number

DATA = Path(__file__).parent / "data"
CASES = [json.loads(line) for name in ("math_answers.jsonl", "math_answers_second_set.jsonl")
         for line in (DATA / name).read_text().splitlines()]
STYLES = ("The answer is therefore $\\boxed{{{}}}$.", "The final answer is ${}$.", "{}")


@pytest.mark.parametrize("case", CASES, ids=[c["kind"] for c in CASES])
def test_equivalent_forms_score_one_and_near_misses_zero(case):
    for style in STYLES:
        for form in case["same"]:
            assert math_reward(style.format(form), case["gold"]) == 1.0, (style.format(form), case["gold"])
        for form in case["different"]:
            assert math_reward(style.format(form), case["gold"]) == 0.0, (style.format(form), case["gold"])


def test_reference_solutions_score_one_and_a_near_miss_in_their_box_zero():
    for line in (DATA / "math_solutions_second_set.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert math_reward(r["solution"], r["gold"]) == 1.0, r["solution"][-80:]
        assert math_reward(r["wrong_solution"], r["gold"]) == 0.0, r["wrong_solution"][-80:]


def test_the_numeric_reward_refuses_what_only_math_can_compare():
    """The issue's cases: last-number comparison took \\frac{15}{3} for \\frac{14}{3} and (-∞, 3) for (-∞, 3]."""
    for gold, wrong in (("\\frac{14}{3}", "\\frac{15}{3}"), ("(-\\infty, 3]", "(-\\infty, 3)"),
                        ("3\\sqrt{13}", "2\\sqrt{13}")):
        assert plain_number(gold) is None
        assert math_reward(f"$\\boxed{{{wrong}}}$", gold) == 0.0
    assert math_reward("$\\boxed{0.5}$", "\\frac{1}{2}") == 1.0
    assert math_reward("$\\boxed{40000}$", "40,\\!000") == 1.0


def test_reference_solutions_of_the_public_data_score_one(shared_data):
    aime = [json.loads(line) for line in (shared_data / "aime24_amc23" / "aime24_test.jsonl").read_text().splitlines()]
    assert all(math_reward(r["solution"], r["answer"]) == 1.0 for r in aime)  # AoPS text, \textbf{(073)} included
    gsm8k = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    for r in gsm8k[::4]:
        head, final = r["answer"].rsplit("####", 1)
        assert math_reward(r["answer"], r["answer"]) == 1.0, r["answer"][-80:]
        assert math_reward(f"{head}#### {int(final.replace(',', '')) + 1}", r["answer"]) == 0.0, r["answer"][-80:]


def test_unreadable_gold_is_refused():
    assert parse_gold("\\frac{") == [] and parse_gold("2+") == []
    with pytest.raises(ValueError, match="cannot be read as mathematics"):
        math_reward("1", "\\frac{")


def test_the_math_reward_runs_in_workers_and_scores_a_batch():
    reward = get("math", RewardOptions(reward_workers=2))
    try:
        scores = reward(["q"] * 4, ["$\\boxed{\\dfrac{14}{3}}$", "$\\boxed{5}$", "so x = 14/3", "no answer"],
                        ["\\frac{14}{3}"] * 4)
    finally:
        reward.close()
    assert scores == [1.0, 0.0, 1.0, 0.0] and reward.failures == 0
