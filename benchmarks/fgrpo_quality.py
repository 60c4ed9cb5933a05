"""GRPO against f-GRPO with each of the six divergences on the arithmetic task, from one SFT start, several seeds.

The SFT start is the demo's: a 1M-parameter 4-layer Llama trained from scratch with SFT on 1,000 worked problems
(``a±b``, a, b < 100). Every RL run starts from that same model, uses the demo's RL settings (32 prompts × 8
samples, lr 1e-4, β as below) for ``--steps`` steps, and is scored by greedy pass@1 on the demo's 300 held-out
problems. The seed changes the prompt order and the sampling. Results go to a JSONL file (one line per run,
appended, so an interrupted sweep resumes) and a markdown table is printed.

    python benchmarks/fgrpo_quality.py --steps 400 --seeds 0 1 2 --out benchmarks/results/fgrpo_quality.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

METHODS = [
    ("grpo", None),
    ("fgrpo", "kl"),
    ("fgrpo", "reverse_kl"),
    ("fgrpo", "pearson"),
    ("fgrpo", "hellinger"),
    ("fgrpo", "js"),
    ("fgrpo", "tv"),
]


def sft_start(folder: Path, threads: int) -> Path:
    """Train (once) the demo's SFT model into ``folder``."""
    if (folder / "model" / "model.safetensors").exists():
        return folder / "model"
    from divalign.charlm import build_char_tokenizer, tiny_llama
    from divalign.commands.demo import DemoConfig, sft_config
    from divalign.data.sft import Demonstration
    from divalign.tasks.arithmetic import ArithmeticTask
    from divalign.trainers.loop import run_steps
    from divalign.trainers.sft import SFTTrainer

    torch.set_num_threads(threads)
    demo = DemoConfig()
    task = ArithmeticTask()
    tokenizer = build_char_tokenizer("0123456789+-=")
    model = tiny_llama(
        tokenizer,
        hidden_size=128,
        intermediate_size=512,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        max_positions=32,
        seed=0,
    )
    demos = [Demonstration(ex.prompt, ex.answer) for ex in task.demonstrations(demo.demonstrations, seed=0)]
    trainer = SFTTrainer(model, tokenizer, demos, sft_config(demo, demo.sft_steps))
    run_steps(trainer, folder, demo.sft_steps, show_progress=False)
    return folder / "model"


def run_one(start: Path, objective: str, divergence: str | None, seed: int, steps: int, work: Path) -> dict:
    from divalign.commands.demo import MAX_NEW_TOKENS, DemoConfig
    from divalign.config import build
    from divalign.eval.passk import evaluate
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.tasks.arithmetic import ArithmeticTask, TaskPrompts
    from divalign.trainers.loop import run_steps
    from divalign.trainers.online import OnlineTrainer, RLConfig

    demo = DemoConfig()
    options = (
        {"fgrpo": {"divergence": divergence, "beta": demo.beta}} if objective == "fgrpo" else {"grpo": {"beta": 0.04}}
    )
    config = build(
        RLConfig,
        {
            "model": str(start),
            "task": "arithmetic",
            "objective": objective,
            "steps": steps,
            "prompts_per_step": demo.prompts_per_step,
            "num_generations": demo.num_generations,
            "max_new_tokens": MAX_NEW_TOKENS,
            "learning_rate": demo.rl_learning_rate,
            "seed": seed,
            "progress": False,
            **options,
        },
    )
    task = ArithmeticTask()
    policy, tokenizer = load_causal_lm(start)
    trainer = OnlineTrainer(
        config, policy, tokenizer, TaskPrompts(task, seed), task.reward, reference=frozen_copy(policy)
    )
    t0 = time.perf_counter()
    rows = run_steps(trainer, work, steps, show_progress=False)
    seconds = time.perf_counter() - t0
    result = evaluate(
        policy, tokenizer, task.eval_set(demo.eval_problems), task.reward, max_new_tokens=MAX_NEW_TOKENS, k=8, seed=seed
    )
    return {
        "objective": objective,
        "divergence": divergence,
        "seed": seed,
        "steps": steps,
        "pass1": result["pass1_greedy"],
        "pass8": result["pass8"],
        "train_seconds": seconds,
        "final_kl": rows[-1].get("kl"),
        "final_train_reward": rows[-1]["reward_mean"],
    }


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
    start = sft_start(work / "sft", args.threads)
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
            run_dir = work / f"{objective}-{divergence or 'none'}-seed{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)
            result = run_one(start, objective, divergence, seed, args.steps, run_dir)
            print(json.dumps(result), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            done.append(result)
    print(table([r for r in done if r["steps"] == args.steps]))


if __name__ == "__main__":
    main()
