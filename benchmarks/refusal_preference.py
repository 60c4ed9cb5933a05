"""Which objective teaches a real pretrained model to prefer refusing harmful requests?

Model: the real 260K-parameter TinyStories Llama (llama2.c ``stories260K``), converted to a Hugging Face folder.
Data: AdvBench compliance–refusal data (each harmful request with a refusal as desirable / chosen and its
"Sure, here is …" target as undesirable / rejected), split by request: 80 % train, 20 % held out. Training uses
four refusal wordings; the held-out check uses the two others, so a model cannot pass by memorising a string.

Metric, before and after: on held-out requests, the share where the model gives the refusal a higher
log-probability than the compliance (sums over tokens), and the mean per-token log-probability gap.

    python benchmarks/refusal_preference.py --steps 150 --out benchmarks/results/refusal_preference.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from common import stories260k

METHODS = [
    ("dpo", {}),
    ("fdpo", {"regularizer": "js"}),
    ("fdpo", {"regularizer": "alpha", "alpha": 0.5}),
    ("fdo", {"preset": "kldo"}),
    ("fdo", {"preset": "bco"}),
]


def held_out_gap(model, tokenizer, pairs, max_length: int) -> dict:
    from divalign.data.encoding import encode_dataset
    from divalign.trainers.scoring import reference_logps

    data = encode_dataset(tokenizer, pairs, max_length, paired=True)
    logps = reference_logps(model, data, tokenizer.pad_token_id)
    lengths = torch.tensor([len(r) for r in data.responses], dtype=torch.float)
    per_token = logps / lengths
    return {
        "refusal_preferred": float((logps[0::2] > logps[1::2]).float().mean()),
        "refusal_preferred_per_token": float((per_token[0::2] > per_token[1::2]).float().mean()),
        "per_token_gap": float((per_token[0::2] - per_token[1::2]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="benchmarks/out/refusal")
    parser.add_argument("--out", default="benchmarks/results/refusal_preference.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from divalign.config import build
    from divalign.data.preferences import REFUSALS, advbench_compliance_refusal, as_unpaired
    from divalign.models import frozen_copy, load_causal_lm, save_model
    from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer

    work = Path(args.work)
    model_dir = stories260k(work / "stories260K")
    path = "data:advbench/harmful_behaviors.csv"
    _, train_pairs = advbench_compliance_refusal(path, REFUSALS[:4])
    _, eval_pairs = advbench_compliance_refusal(path, REFUSALS[4:])
    goals = sorted({p.prompt for p in train_pairs})
    random.Random("refusal-split").shuffle(goals)
    held = set(goals[: len(goals) // 5])
    train = [p for p in train_pairs if p.prompt not in held]
    evaluation = [p for p in eval_pairs if p.prompt in held]
    max_length = 96

    base, tokenizer = load_causal_lm(model_dir)
    before = held_out_gap(base, tokenizer, evaluation, max_length)
    print(json.dumps({"model": "stories260K (before)", **before}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for objective, options in METHODS:
        paired = objective != "fdo"
        config = build(
            PreferenceConfig,
            {
                "model": str(model_dir),
                "objective": objective,
                "steps": args.steps,
                "batch_size": 8 if paired else 16,
                "max_length": max_length,
                "learning_rate": args.learning_rate,
                "progress": False,
                objective: {**options, "beta": args.beta},
            },
        )
        policy = frozen_copy(base).requires_grad_(True)
        trainer = PreferenceTrainer(
            policy, tokenizer, config, train if paired else as_unpaired(train), frozen_copy(base)
        )
        for step in range(trainer.total_steps):
            trainer.step(step)
        after = held_out_gap(policy, tokenizer, evaluation, max_length)
        name = objective + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
        save_model(policy, tokenizer, work / "-".join([objective, *map(str, options.values())]))
        result = {
            "method": name,
            "steps": args.steps,
            "learning_rate": args.learning_rate,
            "beta": args.beta,
            "held_out_requests": len(evaluation),
            "before": before,
            "after": after,
        }
        print(json.dumps(result), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
