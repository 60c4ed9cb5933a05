"""GRPO against f-GRPO with each of the six divergences on the arithmetic task, from one SFT start, several seeds.

The SFT start is the demo's: a 1M-parameter 4-layer Llama trained from scratch with SFT on 1,000 worked problems
(``a±b``, a, b < 100; benchmarks/common.py). Every RL run starts from that same model, uses the demo's RL settings
(32 prompts × 8 samples, lr 1e-4; f-GRPO β 0.1, GRPO β 0.04) for ``--steps`` steps, and is scored by greedy
pass@1 on the demo's 300 held-out problems (and pass@8, and pass@1 on their hardest third). The seed changes the
prompt order and the sampling. Results go to a JSONL file (one line per run, appended, so an interrupted sweep
resumes) and a markdown table is printed.

    python benchmarks/fgrpo_quality.py --steps 400 --seeds 0 1 2 --out benchmarks/results/fgrpo_quality.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from common import arithmetic_scores, demo_sft_model, rl_run

METHODS = [
    ("grpo", None),
    ("fgrpo", "kl"),
    ("fgrpo", "reverse_kl"),
    ("fgrpo", "pearson"),
    ("fgrpo", "hellinger"),
    ("fgrpo", "js"),
    ("fgrpo", "tv"),
]


def run_one(start: Path, objective: str, divergence: str | None, seed: int, steps: int, work: Path) -> dict:
    from divalign.commands.demo import DemoConfig

    options = {"divergence": divergence, "beta": DemoConfig().beta} if objective == "fgrpo" else {"beta": 0.04}
    policy, tokenizer, rows, seconds = rl_run(start, objective, options, seed, steps, work)
    return {"objective": objective, "divergence": divergence, "seed": seed, "steps": steps, "train_seconds": seconds,
            "final_kl": rows[-1].get("kl"), "final_train_reward": rows[-1]["reward_mean"],
            **arithmetic_scores(policy, tokenizer, seed)}


def table(results: list[dict]) -> str:
    lines = ["| method | greedy pass@1 (mean ± std) | pass@8 | runs |", "|---|---|---|---|"]
    for objective, divergence in METHODS:
        runs = [r for r in results if r["objective"] == objective and r["divergence"] == divergence]
        if not runs:
            continue
        p1 = [100 * r["pass1"] for r in runs]
        p8 = [100 * r["pass8"] for r in runs]
        name = "GRPO" if objective == "grpo" else f"f-GRPO {divergence}"
        std = statistics.stdev(p1) if len(p1) > 1 else 0.0
        lines.append(f"| {name} | {statistics.mean(p1):.1f} ± {std:.1f} | {statistics.mean(p8):.1f} | {len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="benchmarks/out/fgrpo_quality")
    parser.add_argument("--out", default="benchmarks/results/fgrpo_quality.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    start = demo_sft_model(Path("benchmarks/out/demo_sft"), args.threads)
    for seed in args.seeds:
        for objective, divergence in METHODS:
            if any(
                r["objective"] == objective
                and r["divergence"] == divergence
                and r["seed"] == seed
                and r["steps"] == args.steps
                for r in done
            ):
                continue
            result = run_one(start, objective, divergence, seed, args.steps,
                             work / f"{objective}-{divergence or 'none'}-seed{seed}")
            print(json.dumps(result), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            done.append(result)
    print(table([r for r in done if r["steps"] == args.steps]))


if __name__ == "__main__":
    main()
