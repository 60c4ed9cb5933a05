"""Reward model on HH-RLHF: held-out pairwise accuracy next to the "longer answer wins" baseline.

Backbone: the real 260K-parameter TinyStories Llama, converted to a Hugging Face folder, with a fresh scalar head.
Data: HH-RLHF harmless-base and helpful-base test splits (the train splits are not available here), pooled and split
by dialogue prompt: 80 % train, 20 % held out. Bradley–Terry loss, max length 256 tokens (prompts cut from the left).

    python benchmarks/rm_hh_rlhf.py --epochs 2 --out benchmarks/results/rm_hh_rlhf.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from common import stories260k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="benchmarks/out/rm")
    parser.add_argument("--out", default="benchmarks/results/rm_hh_rlhf.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from divalign.config import build
    from divalign.data.builtin import split_by_prompt
    from divalign.data.preferences import read_hh_rlhf
    from divalign.models import load_reward_model
    from divalign.trainers.loop import run_steps
    from divalign.trainers.reward_model import RewardModelTrainer, RMConfig, length_baseline_accuracy

    work = Path(args.work)
    backbone = stories260k(work / "stories260K")
    subsets = {name: read_hh_rlhf(f"data:hh_rlhf/{name}/test.jsonl.gz") for name in ("harmless-base", "helpful-base")}
    train, held = [], {}
    for name, pairs in subsets.items():
        t, h = split_by_prompt(pairs, 0.2, seed=0)
        train += t
        held[name] = h
    config = build(
        RMConfig,
        {
            "model": str(backbone),
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "max_length": args.max_length,
            "lr_schedule": "cosine",
            "warmup_steps": 20,
            "progress": False,
        },
    )
    model, tokenizer = load_reward_model(backbone)
    all_held = held["harmless-base"] + held["helpful-base"]
    trainer = RewardModelTrainer(model, tokenizer, config, train)
    before = trainer.evaluate(all_held)
    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    run_steps(trainer, run_dir, trainer.total_steps, show_progress=False)
    seconds = time.perf_counter() - t0
    result = {
        "benchmark": "rm_hh_rlhf",
        "train_pairs": len(train),
        "held_out_pairs": len(all_held),
        "steps": trainer.total_steps,
        "train_seconds": seconds,
        "accuracy_before": before,
        "accuracy": trainer.evaluate(all_held),
        "length_baseline": length_baseline_accuracy(all_held),
    }
    for name, pairs in held.items():
        result[name] = {
            "pairs": len(pairs),
            "accuracy": trainer.evaluate(pairs),
            "length_baseline": length_baseline_accuracy(pairs),
        }
    print(json.dumps(result), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
