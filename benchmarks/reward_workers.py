"""Seconds to score one RL step's completions with a reward run out of process, by the number of worker processes,
next to calling the function in the trainer's process one completion at a time.

Three verifiers, each scoring 64 completions (8 prompts × 8 generations):

* ``math``: the math reward on GSM8K reference solutions and AIME 2024 boxed answers (CPU-bound, a few ms each);
* ``slow_cpu``: a CPU-bound check of about 20 ms per call, as when a verifier runs a completion's code against
  tests;
* ``slow_wait``: a call that waits 50 ms, as when a verifier asks a remote judge.

Pools are started once (the start is timed separately); batches are interleaved across the settings and repeated,
and the median is reported.

    python benchmarks/reward_workers.py [--repeats 5] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

from divalign.paths import data_dir
from divalign.rewards import RewardOptions, get

ROOT = Path(__file__).resolve().parent
BATCH = 64


def slow_cpu(completion: str, answer: str) -> float:
    """About 20 ms of pure-Python work, then an exact comparison."""
    total = 0
    for i in range(400_000):
        total += i % 7
    return float(completion.strip() == str(answer).strip()) + 0.0 * total


def slow_wait(completion: str, answer: str) -> float:
    """A 50 ms wait, then an exact comparison."""
    time.sleep(0.05)
    return float(completion.strip() == str(answer).strip())


def math_batch(data: Path) -> tuple[list[str], list[str]]:
    """64 (completion, gold) pairs: GSM8K reference solutions and AIME boxed answers, half of them wrong."""
    gsm8k = [json.loads(line) for line in (data / "gsm8k" / "test.jsonl").read_text().splitlines()][:BATCH // 2]
    aime = [json.loads(line) for line in
            (data / "aime24_amc23" / "aime24_test.jsonl").read_text().splitlines()][:BATCH // 2]
    completions = [r["answer"] for r in gsm8k] + [
        f"So the answer is $\\boxed{{{int(r['answer']) + (i % 2)}}}$." for i, r in enumerate(aime)]
    golds = [r["answer"] for r in gsm8k] + [r["answer"] for r in aime]
    return completions, golds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "reward_workers.jsonl")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from divalign.verifiers.math import math_reward

    completions, golds = math_batch(data_dir())
    prompts = [""] * BATCH
    verifiers = {"math": ("math", math_reward),
                 "slow_cpu": ("reward_workers:slow_cpu", slow_cpu),
                 "slow_wait": ("reward_workers:slow_wait", slow_wait)}
    line = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "batch": BATCH, "verifiers": {}}
    for name, (spec, function) in verifiers.items():
        rewards, start_seconds = {}, {}
        for n in args.workers:
            reward = get(spec, RewardOptions(reward_workers=n, reward_timeout=60))
            t = time.perf_counter()
            reward(prompts, completions[:n], golds[:n])  # starts the workers
            start_seconds[n] = time.perf_counter() - t
            rewards[n] = reward
        times = {"in process": [], **{f"{n} workers": [] for n in args.workers}}
        expected = [function(c, g) for c, g in zip(completions, golds)]
        for _ in range(args.repeats):
            t = time.perf_counter()
            [function(c, g) for c, g in zip(completions, golds)]
            times["in process"].append(time.perf_counter() - t)
            for n, reward in rewards.items():
                t = time.perf_counter()
                got = reward(prompts, completions, golds)
                times[f"{n} workers"].append(time.perf_counter() - t)
                assert got == expected, f"{name} with {n} workers scored differently"
        for reward in rewards.values():
            reward.close()
        medians = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:10} " + "  ".join(f"{k} {1000 * v:7.1f} ms" for k, v in medians.items())
              + "  | in process ÷ N workers: "
              + ", ".join(f"{n}: {medians['in process'] / medians[f'{n} workers']:.2f}x" for n in args.workers)
              + "  | pool start " + ", ".join(f"{n}: {s:.2f} s" for n, s in start_seconds.items()))
        line["verifiers"][name] = {"median_seconds": medians, "pool_start_seconds": start_seconds,
                                   "runs": times}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
