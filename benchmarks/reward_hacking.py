"""Reward hacking with a learned reward: on-policy f-GRPO on a proxy reward model, f-HAL (proxy + gold-labelled
preference pairs), and offline DPO / FDO on the pairs alone.

Setting (arithmetic, starting from the demo's SFT model, benchmarks/common.py):

* **gold reward**: exact correctness of the answer (programmatic, never seen by the on-policy learners);
* **gold-labelled pairs**: ``--pairs`` training prompts, each with its correct answer (chosen) and a wrong answer
  the SFT model itself produced (rejected; a perturbed answer when it produced none);
* **proxy reward**: a Bradley–Terry reward model (the SFT model's backbone with a scalar head) trained on those
  pairs only — a learned reward that the policy can exploit.

Every ``--eval-every`` steps, 64 held-out prompts × 4 samples are scored by the gold reward and by the proxy.
Each method runs for each seed; the series, a table of the final values and a plot (gold and proxy reward over
steps, mean over seeds) are written.

    python benchmarks/reward_hacking.py --steps 300 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch
from common import demo_sft_model, rl_trainer

PROMPTS_EVAL = 64


def gold_pairs(start: Path, count: int, seed: int = 0):
    """(prompt, correct answer, one of the SFT model's own wrong answers) for ``count`` training prompts."""
    from divalign.data.preferences import Pair
    from divalign.eval.generations import Decoding, generate
    from divalign.models import load_causal_lm
    from divalign.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask()
    examples = task.demonstrations(count, seed=1000 + seed)
    model, tokenizer = load_causal_lm(start)
    samples = generate(model, tokenizer, [e.prompt for e in examples], Decoding(6, greedy=False, seed=seed),
                       samples=8, show_progress=False)
    rng = random.Random(seed)
    pairs = []
    for i, ex in enumerate(examples):
        wrong = [s["response"].strip() for s in samples[i * 8:(i + 1) * 8] if s["response"].strip() != ex.answer]
        rejected = wrong[0] if wrong and wrong[0] else str(int(ex.answer) + rng.choice([-10, -1, 1, 10]))
        pairs.append(Pair(ex.prompt, ex.answer, rejected))
    return pairs


def train_proxy(start: Path, pairs, folder: Path, steps: int) -> Path:
    from divalign.config import build
    from divalign.models import load_reward_model
    from divalign.trainers.loop import run_steps
    from divalign.trainers.reward_model import RewardModelTrainer, RMConfig

    if (folder / "model" / "model.safetensors").exists():
        return folder / "model"
    config = build(RMConfig, {"model": str(start), "batch_size": 16, "steps": steps, "learning_rate": 1e-3,
                              "max_length": 16, "progress": False})
    model, tokenizer = load_reward_model(start)
    run_steps(RewardModelTrainer(model, tokenizer, config, pairs), folder, steps, show_progress=False)
    return folder / "model"


class Monitor:
    """Gold and proxy reward of sampled answers to fixed held-out prompts."""

    def __init__(self, proxy_folder: Path):
        from divalign import rewards
        from divalign.tasks.arithmetic import ArithmeticTask

        task = ArithmeticTask()
        self.examples = task.eval_set(PROMPTS_EVAL)
        self.gold = task.reward
        self.proxy = rewards.get(f"rm:{proxy_folder}")

    def __call__(self, policy, tokenizer, seed: int) -> dict:
        from divalign.eval.generations import Decoding, generate

        samples = generate(policy, tokenizer, [e.prompt for e in self.examples], Decoding(6, greedy=False, seed=seed),
                           samples=4, show_progress=False)
        prompts = [e.prompt for e in self.examples for _ in range(4)]
        answers = [e.answer for e in self.examples for _ in range(4)]
        texts = [s["response"] for s in samples]
        return {"gold": statistics.fmean(self.gold(prompts, texts, answers)),
                "proxy": statistics.fmean(self.proxy(prompts, texts, answers))}


def run_method(name, start, proxy, pairs, seed, steps, every, monitor) -> list[dict]:
    """Train ``steps`` steps, scoring gold and proxy every ``every`` steps; returns the series."""
    from divalign.config import build
    from divalign.data.preferences import as_unpaired
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer

    series = []
    if name in ("f-GRPO (proxy)", "f-HAL (proxy + pairs)"):
        from divalign import rewards

        objective = "fgrpo" if name.startswith("f-GRPO") else "fhal"
        options = {"divergence": "js", "beta": 0.1}
        preference = as_unpaired(pairs) if objective == "fhal" else None
        trainer = rl_trainer(start, objective, options, seed, steps, reward=rewards.get(f"rm:{proxy}"),
                             preference=preference)
        for step in range(steps + 1):
            if step % every == 0:
                series.append({"step": step, **monitor(trainer.policy, trainer.tokenizer, seed)})
            if step < steps:
                trainer.step(step)
        return series
    objective, options = ("dpo", {"beta": 0.1}) if name.startswith("DPO") else ("fdo", {"divergence": "js",
                                                                                         "beta": 0.1})
    policy, tokenizer = load_causal_lm(start)
    config = build(PreferenceConfig, {"model": str(start), "objective": objective, "batch_size": 16, "steps": steps,
                                      "learning_rate": 1e-4, "max_length": 16, "seed": seed, "progress": False,
                                      objective: options})
    items = pairs if objective == "dpo" else as_unpaired(pairs)
    trainer = PreferenceTrainer(policy, tokenizer, config, items, frozen_copy(policy))
    for step in range(steps + 1):
        if step % every == 0:
            series.append({"step": step, **monitor(policy, tokenizer, seed)})
        if step < steps:
            trainer.step(step)
    return series


METHODS = ("f-GRPO (proxy)", "f-HAL (proxy + pairs)", "DPO (pairs)", "FDO-JS (pairs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--rm-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="benchmarks/out/reward_hacking")
    parser.add_argument("--out", default="benchmarks/results/reward_hacking.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    start = demo_sft_model(Path("benchmarks/out/demo_sft"), args.threads)
    pairs = gold_pairs(start, args.pairs)
    proxy = train_proxy(start, pairs, work / "proxy", args.rm_steps)
    monitor = Monitor(proxy)
    for seed in args.seeds:
        for name in METHODS:
            if any(r["method"] == name and r["seed"] == seed and r["steps"] == args.steps for r in done):
                continue
            series = run_method(name, start, proxy, pairs, seed, args.steps, args.eval_every, monitor)
            result = {"method": name, "seed": seed, "steps": args.steps, "series": series}
            print(json.dumps(result), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            done.append(result)
    report([r for r in done if r["steps"] == args.steps], Path(args.out).with_suffix(".png"))


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def report(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    print("| method | gold reward, start → end (mean ± std over seeds) | proxy reward, start → end | seeds |\n"
          "|---|---|---|---|")
    for name in METHODS:
        runs = [r["series"] for r in results if r["method"] == name]
        if not runs:
            continue
        steps = [p["step"] for p in runs[0]]
        for ax, key in zip(axes, ("gold", "proxy")):
            mean = [statistics.fmean(s[i][key] for s in runs) for i in range(len(steps))]
            ax.plot(steps, mean, marker="o", label=name)
        cells = []
        for key, digits in (("gold", 3), ("proxy", 2)):
            first, last = [s[0][key] for s in runs], [s[-1][key] for s in runs]
            cells.append(f"{statistics.fmean(first):.{digits}f} → {statistics.fmean(last):.{digits}f} ± "
                         f"{spread(last):.{digits}f}")
        print(f"| {name} | {cells[0]} | {cells[1]} | {len(runs)} |")
    for ax, key in zip(axes, ("gold reward (exact correctness)", "proxy reward (learned RM)")):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
