"""Online methods compared on the arithmetic task: GRPO, Dr. GRPO, DAPO, RLOO, PPO, DaGRPO, REINFORCE++ (and its
baseline variant), GSPO, CISPO, SAPO, GMPO, DPPO and f-GRPO.

Every run starts from the demo's SFT model (benchmarks/common.py) and uses the demo's RL settings (32 prompts × 8
samples, lr 1e-4, 6 new tokens) with each method's own defaults, for ``--steps`` steps and each seed. Reported:
greedy pass@1 on the demo's 300 held-out problems, pass@8, greedy pass@1 on their hardest third (most carries and
borrows), KL(π ‖ π_SFT) after training (k1 per response, 4 samples of each of the first 100 held-out problems;
methods without a KL term run without a reference during training but are measured the same way) and seconds per
step. Results are appended to a JSONL file (an interrupted sweep
resumes; several processes may share it with ``--only``) and printed as a table.

    python benchmarks/online_comparison.py --steps 400 --seeds 0 1 2 --fgrpo-divergence reverse_kl
    python benchmarks/online_comparison.py --only grpo --sampling-dtype bf16 --tis-cap 2   # sampling in bf16, TIS
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from common import arithmetic_scores, demo_sft_model, rl_run

from divalign.commands.demo import MAX_NEW_TOKENS
from divalign.eval.metrics import kl_to_reference
from divalign.models import load_causal_lm
from divalign.tasks.arithmetic import ArithmeticTask


def methods(divergence: str) -> list[tuple[str, str, dict | None]]:
    return [("GRPO", "grpo", None), ("Dr. GRPO", "dr_grpo", None), ("DAPO", "dapo", None), ("RLOO", "rloo", None),
            ("PPO", "ppo", None), ("DaGRPO", "dagrpo", None), ("REINFORCE++", "reinforce_pp", None),
            ("REINFORCE++-baseline", "reinforce_pp_baseline", None), ("GSPO", "gspo", None), ("CISPO", "cispo", None),
            ("SAPO", "sapo", None), ("GMPO", "gmpo", None), ("DPPO (TV)", "dppo", None),
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

    def plain(values, digits):
        return f"{statistics.mean(values):.{digits}f}" if values else "–"

    lines = ["| method | greedy pass@1 | pass@1, hardest third | pass@8 | KL to reference | s / step | seeds |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        runs = [r for r in results if r["method"] == name]
        if runs:
            kl = [r["kl_end"] for r in runs if "kl_end" in r]
            per_step = [r["train_seconds"] / r["steps"] for r in runs]
            lines.append(f"| {name} | {cell([r['pass1'] for r in runs])} | "
                         f"{cell([r['pass1_hardest_third'] for r in runs])} | {cell([r['pass8'] for r in runs])} | "
                         f"{plain(kl, 3)} | {plain(per_step, 3)} | {len(runs)} |")
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
    parser.add_argument("--sampling-dtype", default="auto", help="sample in this precision (training stays fp32)")
    parser.add_argument("--tis-cap", type=float, default=0.0, help="truncated importance sampling cap (0: off)")
    parser.add_argument("--minibatches", type=int, default=1,
                        help="optimizer steps per batch (each on a share of its groups): the later ones are off-policy, "
                             "where the trust regions of the methods differ")
    parser.add_argument("--reuse", default="",
                        help="results of fgrpo_quality.py: its GRPO and f-GRPO runs have the same settings and are "
                             "taken from there when present (only from the same code)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    start = demo_sft_model(Path("benchmarks/out/demo_sft"), args.threads)
    reference, _ = load_causal_lm(start)
    held_out = ArithmeticTask().eval_set(100)
    listed = methods(args.fgrpo_divergence)
    overrides = {"sampling_dtype": args.sampling_dtype, "tis_cap": args.tis_cap, "minibatches": args.minibatches}
    notes = [f"{args.sampling_dtype} sampling"] if args.sampling_dtype != "auto" else []
    notes += [f"TIS {args.tis_cap:g}"] if args.tis_cap else []
    notes += [f"{args.minibatches} minibatches"] if args.minibatches > 1 else []
    if notes:
        listed = [(f"{name} [{', '.join(notes)}]", objective, options) for name, objective, options in listed]
    for seed in args.seeds:
        for name, objective, options in listed:
            if args.only is not None and objective not in args.only:
                continue
            if any(r["method"] == name and r["seed"] == seed and r["steps"] == args.steps for r in done):
                continue
            earlier = reused(Path(args.reuse), objective, options, seed, args.steps) if args.reuse else None
            if earlier is not None:
                result = {"method": name, "objective": objective, "seed": seed, "steps": args.steps,
                          "reused_from": args.reuse, **earlier}
                with open(out, "a") as handle:
                    handle.write(json.dumps(result) + "\n")
                done.append(result)
                continue
            policy, tokenizer, rows, seconds = rl_run(start, objective, options, seed, args.steps,
                                                      work / f"{objective}-seed{seed}", **overrides)
            kl = kl_to_reference(policy, reference, tokenizer, [ex.prompt for ex in held_out], samples_per_prompt=4,
                                 max_new_tokens=MAX_NEW_TOKENS, seed=seed)
            result = {"method": name, "objective": objective, "seed": seed, "steps": args.steps,
                      "train_seconds": seconds, "kl_end": kl["kl"], "kl_stderr": kl["kl_stderr"],
                      **({"mismatch_kl": statistics.mean(r["mismatch_kl"] for r in rows if "mismatch_kl" in r)}
                         if "mismatch_kl" in rows[-1] else {}),
                      **arithmetic_scores(policy, tokenizer, seed)}
            print(json.dumps(result), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            done.append(result)
    print(table([r for r in done if r["steps"] == args.steps], [name for name, _, _ in listed]))


if __name__ == "__main__":
    main()
