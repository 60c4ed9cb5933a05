"""Seconds per GRPO step: divalign against TRL's GRPOTrainer, interleaved in one process.

Both train the same 0.5M-parameter Llama folder (hidden 128, MLP 512, 2 layers, 4 heads, 2 KV heads, character
vocabulary) on the same prompts: 4 prompts × 8 completions, 16 new tokens, temperature 1, β = 0.04, lr 1e-5,
one update per batch, fp32, GRPO loss (per-sequence token mean), and a reward with variance (digits in the
completion / 16) so that both really update. TRL's step k runs, then divalign's step k, so drifts in machine
speed hit both alike; the result is the median of the per-step ratios.

    pip install -c constraints.txt -e '.[bench]'   # TRL only for this benchmark
    python benchmarks/grpo_speed.py --steps 60
    python benchmarks/grpo_speed.py --steps 60 --compile   # warm-up steps (compilation) reported apart

Writes a JSON line with the medians to stdout (and to --out if given).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile

from common import (
    TRL_CPU_QUIET,
    Interleaved,
    add_process_options,
    add_share_prompt_option,
    add_trl_checkpointing_option,
    apply_process_options,
    apply_share_prompt_option,
    emit,
    speed_model,
)


def digits_reward(text: str) -> float:
    return sum(c.isdigit() for c in text) / 16


def make_prompts(count: int = 400) -> list[str]:
    rng = random.Random(0)
    return [f"{rng.randrange(100)}+{rng.randrange(100)}=" for _ in range(count)]


def divalign_trainer(folder: str, prompts: list[str], steps: int, compile: bool = False):
    """divalign's side of the benchmark: GRPO on ``folder`` with the configuration of the module docstring."""
    from divalign.config import build
    from divalign.data.prompts import DatasetPrompts, Example
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.rewards import PerSample
    from divalign.trainers.online import OnlineTrainer, RLConfig

    config = build(
        RLConfig,
        {
            "model": folder,
            "objective": "grpo",
            "steps": steps,
            "prompts_per_step": 4,
            "num_generations": 8,
            "max_new_tokens": 16,
            "temperature": 1.0,
            "learning_rate": 1e-5,
            "grpo": {"beta": 0.04},
            "progress": False,
            "compile": compile,
        },
    )
    policy, tokenizer = load_causal_lm(folder)
    source = DatasetPrompts([Example(p, "") for p in prompts], seed=0)
    return OnlineTrainer(config, policy, tokenizer, source, PerSample(lambda text, answer: digits_reward(text)),
                         reference=frozen_copy(policy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="leading steps left out of the medians")
    add_process_options(parser)
    parser.add_argument("--compile", action="store_true", help="divalign compiles its training and scoring forward")
    parser.add_argument("--out", default=None)
    add_share_prompt_option(parser)
    add_trl_checkpointing_option(parser)
    args = parser.parse_args()
    process = apply_process_options(args)
    apply_share_prompt_option(args)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    workdir = tempfile.mkdtemp(prefix="grpo-speed-")
    folder = speed_model(workdir)
    prompts = make_prompts()

    # --- TRL
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    trl_config = GRPOConfig(
        output_dir=os.path.join(workdir, "trl"),
        per_device_train_batch_size=32,
        num_generations=8,
        max_completion_length=16,
        temperature=1.0,
        beta=0.04,
        learning_rate=1e-5,
        loss_type="grpo",
        num_iterations=1,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        gradient_checkpointing=args.trl_checkpointing,
        **TRL_CPU_QUIET,
    )

    def trl_reward(prompts, completions, **kwargs):
        return [digits_reward(c) for c in completions]

    trainer = divalign_trainer(folder, prompts, args.steps, args.compile)
    timing = Interleaved(trainer.step)

    trl_trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        reward_funcs=trl_reward,
        args=trl_config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[timing.callback()],
    )
    trl_trainer.train()

    result = {
        "benchmark": "grpo_step_time", "share_prompt": args.share_prompt,
        "trl_gradient_checkpointing": args.trl_checkpointing,
        **process,
        "divalign_compile": args.compile,
        **timing.summary(args.warmup, ("generate_s", "score_s", "reference_s", "forward_backward_s", "optimizer_s")),
        "divalign_reward_last": timing.divalign_rows[-1]["reward_mean"],
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
