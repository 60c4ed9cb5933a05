"""Seconds per DPO step: divalign against TRL's DPOTrainer, interleaved in one process.

Same tiny model folder as the GRPO benchmark (0.5M-parameter Llama, character vocabulary), the same 400 pairs,
8 pairs per step, max length 32, β 0.1, fp32, one optimizer step per batch. Run twice: with a live reference
forward on both sides (the goal: divalign ≤ 0.45× TRL), and with reference log-probabilities precomputed once
on both sides (TRL's ``precompute_ref_log_probs``, divalign's ``precompute_reference``); the one-off
precomputation is timed separately. TRL's step k runs, then divalign's step k; the result is the median of the
per-step ratios.

    pip install -c constraints.txt -e '.[bench]'
    python benchmarks/dpo_speed.py --steps 60
    python benchmarks/dpo_speed.py --steps 60 --compile   # warm-up steps (compilation) reported apart
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from common import (
    TRL_CPU_QUIET,
    Interleaved,
    add_process_options,
    add_trl_checkpointing_option,
    apply_process_options,
    emit,
    speed_model,
)


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        noise = "".join(rng.choice("0123456789+-") for _ in range(rng.randrange(6, 16)))
        pairs.append((f"{a}+{b}=", f"{a + b} {noise}", f"{a + b + rng.randrange(1, 9)} {noise[::-1]}"))
    return pairs


def run(precompute: bool, steps: int, warmup: int, folder: str, pairs, workdir: str, compile_forward: bool,
        trl_checkpointing: bool = False) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from divalign.config import build
    from divalign.data.preferences import Pair
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    trl_args = DPOConfig(
        output_dir=os.path.join(workdir, "trl"),
        per_device_train_batch_size=8,
        max_length=32,
        beta=0.1,
        learning_rate=1e-5,
        max_steps=steps,
        precompute_ref_log_probs=precompute,
        gradient_checkpointing=trl_checkpointing,
        **TRL_CPU_QUIET,
    )
    data = Dataset.from_dict(
        {"prompt": [p for p, _, _ in pairs], "chosen": [c for _, c, _ in pairs], "rejected": [r for _, _, r in pairs]}
    )
    t = time.perf_counter()
    policy, da_tok = load_causal_lm(folder)
    config = build(
        PreferenceConfig,
        {
            "model": folder,
            "objective": "dpo",
            "batch_size": 8,
            "max_length": 32,
            "learning_rate": 1e-5,
            "steps": steps,
            "precompute_reference": precompute,
            "dpo": {"beta": 0.1},
            "progress": False,
            "compile": compile_forward,
        },
    )
    trainer = PreferenceTrainer(policy, da_tok, config, [Pair(*p) for p in pairs], frozen_copy(policy))
    da_setup = time.perf_counter() - t

    timing = Interleaved(trainer.step)

    t = time.perf_counter()
    trl = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        args=trl_args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[timing.callback()],
    )
    trl_setup = time.perf_counter() - t  # includes TRL's reference precomputation when enabled
    trl.train()
    return {
        "reference": "precomputed" if precompute else "live",
        "divalign_compile": compile_forward,
        **timing.summary(warmup, ("forward_backward_s", "optimizer_s")),
        "setup_s": {"trl": trl_setup, "divalign": da_setup},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    add_process_options(parser)
    parser.add_argument("--compile", action="store_true", help="divalign compiles its forward")
    parser.add_argument("--out", default=None)
    add_trl_checkpointing_option(parser)
    args = parser.parse_args()
    process = apply_process_options(args)
    workdir = tempfile.mkdtemp(prefix="dpo-speed-")
    folder = speed_model(workdir)
    pairs = make_pairs(400)
    for precompute in (False, True):
        result = {
            "benchmark": "dpo_step_time",
            **process,
            "trl_gradient_checkpointing": args.trl_checkpointing,
            **run(precompute, args.steps, args.warmup, folder, pairs, workdir, args.compile, args.trl_checkpointing),
        }
        emit(result, args.out)


if __name__ == "__main__":
    main()
