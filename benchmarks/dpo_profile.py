"""Where divalign's DPO step spends its time, timed alone (no TRL in the process): the step's phases, and the
throughput of its matrix products on this machine, to compare against the arithmetic of the step.

Same model, pairs and settings as ``dpo_speed.py`` (live reference unless --precompute).

    python benchmarks/dpo_profile.py --steps 200
    python benchmarks/dpo_profile.py --steps 200 --compile
    python benchmarks/dpo_profile.py --steps 200 --batch-size 1     # the step's fixed cost
    python benchmarks/dpo_profile.py --steps 200 --share-prompt always
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time

import torch
from common import (
    add_process_options,
    add_share_prompt_option,
    apply_process_options,
    apply_share_prompt_option,
    speed_model,
)
from dpo_speed import make_pairs


def product_throughput(shapes: list[tuple[int, int, int]], repeats: int = 200) -> dict[str, float]:
    """GFLOP/s of ``(m, k) @ (k, n)`` for each shape, fp32, median of ``repeats`` calls."""
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(20):
            a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[f"{m}x{k}x{n}"] = round(2 * m * k * n / statistics.median(times) / 1e9, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    add_process_options(parser)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--precompute", action="store_true", help="reference log-probabilities computed once")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    add_share_prompt_option(parser)
    args = parser.parse_args()
    process = apply_process_options(args)
    apply_share_prompt_option(args)

    from divalign import models
    from divalign.config import build
    from divalign.data.preferences import Pair
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.models.llama.layout import token_layout
    from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer

    folder = speed_model(tempfile.mkdtemp(prefix="dpo-profile-"))
    policy, tokenizer = load_causal_lm(folder)
    config = build(PreferenceConfig, {
        "model": folder, "objective": "dpo", "batch_size": args.batch_size, "max_length": 32, "learning_rate": 1e-5,
        "steps": args.warmup + args.steps, "precompute_reference": args.precompute, "dpo": {"beta": 0.1},
        "progress": False, "compile": args.compile,
    })
    trainer = PreferenceTrainer(policy, tokenizer, config, [Pair(*p) for p in make_pairs(400)], frozen_copy(policy))
    for step in range(args.warmup):
        trainer.step(step)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rows = [trainer.step(step) for step in range(args.warmup, args.warmup + args.steps)]
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
    phases = {key: round(1000 * statistics.median(r[key] for r in rows), 2)
              for key in ("step_s", "forward_backward_s", "optimizer_s")}

    # The step's products: per layer x @ Wqkv, attention @ Wo, x @ Wgate_up, h @ Wdown over the batch's tokens.
    cfg = policy.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim
    batch = trainer.data.batch(trainer._rows(trainer._units(0)), tokenizer.pad_token_id)
    if args.compile:  # the compiled autograd forward: padded rows, the prompt in a pass of its own if it pays
        shared = models.prompt_sharing_pays(policy, batch, 2)
        n_rows, width = batch.input_ids.shape
        completions = n_rows * (width - batch.prompt_length - 1)
        tokens = n_rows // 2 * batch.prompt_length + completions if shared else n_rows * width
    else:  # the written-out pass: real tokens only, each pair's prompt once
        shared = True
        tokens = len(token_layout(batch.input_ids, batch.attention_mask, batch.prompt_length, 2).token_ids)
    h, i = cfg.hidden_size, cfg.intermediate_size
    per_token = h * qkv + cfg.num_attention_heads * head_dim * h + 2 * h * i + i * h
    passes = 3 + (0 if args.precompute else 1)  # forward, backward (two products each), reference
    flops = 2 * tokens * per_token * cfg.num_hidden_layers * passes
    throughput = product_throughput([(tokens, h, 2 * i), (tokens, i, h), (tokens, h, qkv)])
    result = {
        "benchmark": "dpo_step_profile", **process, "compile": args.compile,
        "reference": "precomputed" if args.precompute else "live", "batch_size": args.batch_size,
        "prompt_shared": shared, "steps_measured": len(rows), "phases_ms": phases,
        "page_faults_per_step": round(faults, 1), "tokens_per_step": tokens,
        "product_gflop_per_step": round(flops / 1e9, 3),
        "product_gflops": throughput,
        "product_floor_ms": round(1000 * flops / (1e9 * statistics.median(throughput.values())), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
