"""Online methods compared on the arithmetic task: GRPO, Dr. GRPO, DAPO, RLOO, PPO, DaGRPO and f-GRPO.

Every run starts from the demo's SFT model (benchmarks/common.py) and uses the demo's RL settings (32 prompts × 8
samples, lr 1e-4, 6 new tokens) with each method's own defaults, for ``--steps`` steps and each seed. Reported:
greedy pass@1 on the demo's 300 held-out problems, pass@8, and greedy pass@1 on their hardest third (most carries
and borrows). Results are appended to a JSONL file (an interrupted sweep resumes) and printed as a table.

    python benchmarks/online_comparison.py --steps 400 --seeds 0 1 2 --fgrpo-divergence reverse_kl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from common import arithmetic_scores, demo_sft_model, rl_run


def methods(divergence: str) -> list[tuple[str, str, dict | None]]:
    return [("GRPO", "grpo", None), ("Dr. GRPO", "dr_grpo", None), ("DAPO", "dapo", None), ("RLOO", "rloo", None),
            ("PPO", "ppo", None), ("DaGRPO", "dagrpo", None),
            (f"f-GRPO ({divergence})", "fgrpo", {"divergence": divergence, "beta": 0.1})]


def reused(path: Path, objective: str, options: dict | None, seed: int, steps: int) -> dict | None:
    """The scores of the same run in fgrpo_quality.py's results (GRPO with its default β, f-GRPO with β 0.1)."""
    if not path.exists() or objective not in ("grpo", "fgrpo"):
        return None
    divergence = (options or {}).get("divergence")
    for line in path.read_text().splitlines():
        r = json.loads(line)
        same = (r["objective"], r["divergence"], r["seed"], r["steps"]) == (objective, divergence, seed, steps)
        if same and "pass1_hardest_third" in r:
            return {k: r[k] for k in ("train_seconds", "pass1", "pass8", "pass1_hardest_third")}
    return None


def table(results: list[dict], names: list[str]) -> str:
    def cell(values):
        values = [100 * v for v in values]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {std:.1f}"

    lines = ["| method | greedy pass@1 | pass@1, hardest third | pass@8 | seeds |", "|---|---|---|---|---|"]
    for name in names:
        runs = [r for r in results if r["method"] == name]
        if runs:
            lines.append(f"| {name} | {cell([r['pass1'] for r in runs])} | "
                         f"{cell([r['pass1_hardest_third'] for r in runs])} | {cell([r['pass8'] for r in runs])} | "
                         f"{len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fgrpo-divergence", default="reverse_kl")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="benchmarks/out/online_comparison")
    parser.add_argument("--out", default="benchmarks/results/online_comparison.jsonl")
    parser.add_argument("--only", nargs="*", default=None, help="run only these objectives (the table shows all)")
    parser.add_argument("--reuse", default="benchmarks/results/fgrpo_quality.jsonl",
                        help="results of fgrpo_quality.py: its GRPO and f-GRPO runs have the same settings and are "
                             "taken from there when present")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    start = demo_sft_model(Path("benchmarks/out/demo_sft"), args.threads)
    listed = methods(args.fgrpo_divergence)
    for seed in args.seeds:
        for name, objective, options in listed:
            if args.only is not None and objective not in args.only:
                continue
            if any(r["method"] == name and r["seed"] == seed and r["steps"] == args.steps for r in done):
                continue
            earlier = reused(Path(args.reuse), objective, options, seed, args.steps)
            if earlier is not None:
                result = {"method": name, "objective": objective, "seed": seed, "steps": args.steps,
                          "reused_from": args.reuse, **earlier}
                with open(out, "a") as handle:
                    handle.write(json.dumps(result) + "\n")
                done.append(result)
                continue
            policy, tokenizer, _, seconds = rl_run(start, objective, options, seed, args.steps,
                                                      work / f"{objective}-seed{seed}")
            result = {"method": name, "objective": objective, "seed": seed, "steps": args.steps,
                      "train_seconds": seconds, **arithmetic_scores(policy, tokenizer, seed)}
            print(json.dumps(result), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            done.append(result)
    print(table([r for r in done if r["steps"] == args.steps], [name for name, _, _ in listed]))


if __name__ == "__main__":
    main()
