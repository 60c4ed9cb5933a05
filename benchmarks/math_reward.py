"""How often the ``math`` reward scores a right answer 1 and a wrong one 0, next to math-verify called directly and
the ``numeric`` reward, on the public competition data of the shared data folder and on written MATH-style cases.

Sources (each gold answer is scored against completions that state it, and against perturbed ones):

* GSM8K test (1,319): the reference solution, ending ``#### 18``, as the completion; perturbed: the final number
  plus one.
* AIME 2024 (30): the AoPS solution text as the completion, and a model-style completion ending
  ``$\\boxed{ANSWER}$``; perturbed: the answer plus one and times ten, boxed.
* AMC 2023 (40, float answers such as ``27.0``): a boxed completion of the integer or decimal; perturbed as AIME.
* Written cases (tests/data/math_answers.jsonl, 61 gold answers of MATH's answer types: fractions, radicals,
  intervals, tuples, sets, matrices, percentages, degrees, thousands separators, text answers, ...): each
  equivalent form and each near miss in three completion styles: a worked answer ending ``$\\boxed{X}$``, a
  sentence ``The final answer is $X$.``, and the bare answer ``X``.
* A second written set, made apart from the code and first run against it unseen
  (tests/data/math_answers_second_set.jsonl, 152 gold answers in MATH's proportions of answer types, same three
  styles), and its 40 MATH-style reference solutions, each also with its boxed answer changed to a near miss
  (tests/data/math_solutions_second_set.jsonl).

"math-verify direct" is its README's use: ``verify(parse("$" + gold + "$"), parse(completion))``. ``numeric``
refuses gold answers that are not plain numbers (counted as refused, not as scored).

    python benchmarks/math_reward.py            # prints the table, appends a line to results/math_reward.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from divalign.paths import data_dir
from divalign.verifiers.math import math_reward
from divalign.verifiers.numeric import numeric_reward, plain_number

ROOT = Path(__file__).resolve().parent
TEST_DATA = ROOT.parent / "tests" / "data"
CASE_SETS = {"written MATH-style cases": TEST_DATA / "math_answers.jsonl",
             "second written set": TEST_DATA / "math_answers_second_set.jsonl"}
STYLES = {
    "worked, boxed": "We compute step by step: $2+2=4$, and $4 \\cdot 3 = 12$. Therefore the answer is $\\boxed{{{}}}$.",
    "sentence": "Putting it together, the final answer is ${}$.",
    "bare": "{}",
}


def math_verify_direct(completion: str, gold: str) -> float:
    import math_verify

    return float(math_verify.verify(math_verify.parse(f"${gold}$"), math_verify.parse(completion)))


def numeric(completion: str, gold: str) -> float | None:
    """The numeric reward, or None where it refuses the gold answer."""
    head = gold.rsplit("####", 1)[-1]
    return None if plain_number(head) is None else numeric_reward(completion, gold)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def boxed(value) -> str:
    return STYLES["worked, boxed"].format(value)


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def sources(data: Path) -> dict[str, list[tuple[str, str, float]]]:
    """Source name -> (completion, gold, expected score)."""
    out = {}
    gsm8k = read_jsonl(data / "gsm8k" / "test.jsonl")
    rows = []
    for r in gsm8k:
        head, final = r["answer"].rsplit("####", 1)
        wrong = int(final.strip().replace(",", "")) + 1
        rows += [(r["answer"], r["answer"], 1.0), (f"{head}#### {wrong}", r["answer"], 0.0)]
    out["GSM8K test: reference solutions / final number + 1"] = rows
    aime = read_jsonl(data / "aime24_amc23" / "aime24_test.jsonl")
    out["AIME 2024: AoPS solution text"] = [(r["solution"], r["answer"], 1.0) for r in aime]
    for name, records, answer in (("AIME 2024", aime, lambda r: int(r["answer"])),
                                  ("AMC 2023", read_jsonl(data / "aime24_amc23" / "amc23_test.jsonl"),
                                   lambda r: float(r["answer"]))):
        rows = []
        for r in records:
            value, gold = answer(r), str(r["answer"])
            rows += [(boxed(number_text(value)), gold, 1.0), (boxed(number_text(value + 1)), gold, 0.0),
                     (boxed(number_text(value * 10)), gold, 0.0)]
        out[f"{name}: boxed answer / + 1, × 10"] = rows
    for name, path in CASE_SETS.items():
        cases = read_jsonl(path)
        for style, template in STYLES.items():
            out[f"{name}, {style}"] = [
                (template.format(x), c["gold"], expected)
                for c in cases for expected, forms in ((1.0, c["same"]), (0.0, c["different"])) for x in forms]
    solutions = read_jsonl(TEST_DATA / "math_solutions_second_set.jsonl")
    out["second written set: reference solutions / near miss boxed"] = [
        row for r in solutions for row in ((r["solution"], r["gold"], 1.0), (r["wrong_solution"], r["gold"], 0.0))]
    return out


def score(fn, rows) -> dict:
    """Shares of right completions scored 1 and of wrong ones scored 0, among the rows the scorer did not
    refuse."""
    scored = {1.0: [], 0.0: []}
    refused = 0
    start = time.perf_counter()
    for completion, gold, expected in rows:
        got = fn(completion, gold)
        if got is None:
            refused += 1
        else:
            scored[expected].append(got == expected)
    return {"right_scored_1": sum(scored[1.0]) / len(scored[1.0]) if scored[1.0] else None,
            "wrong_scored_0": sum(scored[0.0]) / len(scored[0.0]) if scored[0.0] else None,
            "refused": refused, "ms_per_call": 1000 * (time.perf_counter() - start) / len(rows)}


def fmt(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=data_dir(), help="the shared data folder")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "math_reward.jsonl")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    scorers = {"math": math_reward, "math-verify direct": math_verify_direct, "numeric": numeric}
    results, table = {}, sources(args.data)
    print(f"{'source':62} {'n':>5}  " + "  ".join(f"{name:>26}" for name in scorers))
    print(f"{'':62} {'':>5}  " + "  ".join(f"{'right→1':>8} {'wrong→0':>8} {'refused':>8}" for _ in scorers))
    for source, rows in table.items():
        results[source] = {name: score(fn, rows) for name, fn in scorers.items()}
        print(f"{source:62} {len(rows):>5}  " + "  ".join(
            f"{fmt(r['right_scored_1']):>8} {fmt(r['wrong_scored_0']):>8} {r['refused']:>8}"
            for r in results[source].values()))
    every = [row for rows in table.values() for row in rows]
    overall = {name: score(fn, every) for name, fn in scorers.items()}
    print(f"{'all':62} {len(every):>5}  " + "  ".join(
        f"{fmt(r['right_scored_1']):>8} {fmt(r['wrong_scored_0']):>8} {r['refused']:>8}" for r in overall.values()))
    print("ms per call: " + ", ".join(f"{name} {r['ms_per_call']:.2f}" for name, r in overall.items()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as f:
        f.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "sources": results, "all": overall}) + "\n")


if __name__ == "__main__":
    main()
