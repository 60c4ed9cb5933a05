"""``divalign demo``: what online RL with a verifier adds over supervised fine-tuning, on CPU in minutes.

1. Build a character tokenizer and a tiny Llama, and train it from scratch with SFT on a *limited* set of
   arithmetic demonstrations until it is partially skilled (the "before" model).
2. From there, online RL (f-GRPO by default) on fresh training prompts scored only by the verifier.
3. Control: from the same SFT model, SFT continued on the same demonstrations for the same wall time.
4. Evaluate all three on the same held-out problems (greedy pass@1, sampled pass@k, mean reward), print a
   table and write ``summary.json``, the metrics, the models and plots into the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from divalign.charlm import build_char_tokenizer, tiny_llama
from divalign.commands.common import check_output_dir, configure_process, create_run_dir, positive
from divalign.config import build
from divalign.data.chat import Rendered
from divalign.errors import UserError
from divalign.eval.passk import evaluate
from divalign.models import frozen_copy, param_count
from divalign.plots import plot_series
from divalign.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, TaskPrompts
from divalign.tracking import read_metrics
from divalign.trainers.loop import run_steps
from divalign.trainers.online import OnlineTrainer, RLConfig
from divalign.trainers.sft import SFTConfig, SFTTrainer


@dataclass
class DemoConfig:
    """SFT warm-up on limited demonstrations, then RL with a verifier, then evaluation against an SFT control
    trained for the same time; a tiny Llama trained from scratch on integer arithmetic (a±b, a, b < 100)."""

    output_dir: str = "runs/demo"
    """Folder for summary.json, metrics, plots and the models."""
    objective: str = "fgrpo"
    """RL objective: fgrpo or grpo."""
    divergence: str = "reverse_kl"
    """f-divergence for fgrpo: kl, reverse_kl, pearson, hellinger, js, tv or alpha."""
    seed: int = 0
    """Seed of initialisation, data order and sampling."""
    demonstrations: int = 1000
    """Number of distinct worked problems SFT may see (RL sees fresh prompts and only the verifier)."""
    sft_steps: int = 600
    """SFT warm-up steps (batches of sft_batch_size)."""
    sft_batch_size: int = 64
    """SFT batch size."""
    sft_learning_rate: float = 1e-3
    """SFT learning rate (after 20 warm-up steps)."""
    rl_steps: int = 2000
    """RL steps (the reward still rises at 1,500: see BENCHMARKS.md)."""
    rl_learning_rate: float = 1e-4
    """RL learning rate."""
    beta: float = 0.1
    """fgrpo: scale of r = beta * log(pi/pi_ref); grpo: weight of the KL penalty."""
    prompts_per_step: int = 32
    """RL prompts per step."""
    num_generations: int = 8
    """RL samples per prompt."""
    eval_problems: int = 300
    """Held-out problems for the before/after table."""
    pass_k: int = 8
    """k of the sampled pass@k column."""
    control: bool = True
    """Also train the SFT control for the same time as RL."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    progress: bool = True
    """Show progress bars."""


MAX_NEW_TOKENS = 6  # answers are at most 4 characters ("-99", "198") plus end-of-sequence


def rl_config(config: DemoConfig, run_dir: Path) -> RLConfig:
    options = (
        {"fgrpo": {"divergence": config.divergence, "beta": config.beta}}
        if config.objective == "fgrpo"
        else {"grpo": {"beta": config.beta}}
    )
    return build(
        RLConfig,
        {
            "model": "(built in memory by the demo)",
            "output_dir": str(run_dir),
            "task": "arithmetic",
            "objective": config.objective,
            "steps": config.rl_steps,
            "prompts_per_step": config.prompts_per_step,
            "num_generations": config.num_generations,
            "max_new_tokens": MAX_NEW_TOKENS,
            "learning_rate": config.rl_learning_rate,
            "seed": config.seed,
            "progress": config.progress,
            **options,
        },
        where="demo",
    )


def sft_config(config: DemoConfig, steps: int) -> SFTConfig:
    return SFTConfig(
        batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        steps=steps,
        lr_schedule="constant",
        warmup_steps=20,
        max_length=32,
        seed=config.seed,
        progress=config.progress,
    )


def run(config: DemoConfig) -> dict:
    if config.objective not in ("fgrpo", "grpo"):
        raise UserError(f"demo objective must be fgrpo or grpo (got '{config.objective}')")
    positive(
        config,
        "demonstrations",
        "sft_steps",
        "rl_steps",
        "eval_problems",
        "pass_k",
        "prompts_per_step",
        "num_generations",
        "sft_batch_size",
    )
    out = check_output_dir(config.output_dir, resume=False)
    rl_cfg = rl_config(config, out)  # validates objective options (divergence name, beta) before writing
    configure_process(config.threads, config.progress)
    torch.manual_seed(config.seed)

    task = ArithmeticTask(ArithmeticConfig(operands="2", max_value=99, operators="+-"))
    demos = [Rendered(ex.prompt, ex.answer, False) for ex in task.demonstrations(config.demonstrations, seed=config.seed)]
    eval_set = task.eval_set(config.eval_problems)
    tokenizer = build_char_tokenizer("0123456789+-=")
    model = tiny_llama(
        tokenizer,
        hidden_size=128,
        intermediate_size=512,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        max_positions=32,
        seed=config.seed,
    )
    create_run_dir(out, config)
    say = print if config.progress else (lambda *a, **k: None)
    say(
        f"divalign demo: {param_count(model) / 1e6:.2f}M-parameter Llama, {len(demos)} demonstrations, "
        f"{len(eval_set)} held-out problems"
    )

    def sft(policy, steps, folder, seconds=None):
        trainer = SFTTrainer(policy, tokenizer, demos, sft_config(config, steps))
        t0 = time.perf_counter()
        run_steps(trainer, folder, steps, show_progress=config.progress, postfix_keys=("loss",), max_seconds=seconds)
        return time.perf_counter() - t0

    sft_seconds = sft(model, config.sft_steps, out / "sft")
    sft_model = frozen_copy(model)
    policy = model.requires_grad_(True)

    trainer = OnlineTrainer(rl_cfg, policy, tokenizer, TaskPrompts(task, config.seed), task.reward, reference=sft_model)
    t0 = time.perf_counter()
    run_steps(trainer, out, config.rl_steps, show_progress=config.progress)
    rl_seconds = time.perf_counter() - t0

    control_seconds = None
    control_model = None
    if config.control:
        control_model = frozen_copy(sft_model).requires_grad_(True)
        control_model.train()
        control_seconds = sft(control_model, 10**9, out / "control", seconds=rl_seconds)

    def score(m):
        return evaluate(
            m, tokenizer, eval_set, task.reward, max_new_tokens=MAX_NEW_TOKENS, k=config.pass_k, seed=config.seed
        )

    rows = {"SFT (before)": score(sft_model), f"SFT + {config.objective} (after)": score(policy)}
    if control_model is not None:
        rows["SFT continued (control)"] = score(control_model)
    before, after = rows["SFT (before)"], rows[f"SFT + {config.objective} (after)"]
    k = config.pass_k
    summary = {
        "pass1_before": before["pass1_greedy"],
        "pass1_after": after["pass1_greedy"],
        f"pass{k}_before": before[f"pass{k}"],
        f"pass{k}_after": after[f"pass{k}"],
        "reward_before": before["reward_mean"],
        "reward_after": after["reward_mean"],
        "objective": config.objective,
        "divergence": config.divergence if config.objective == "fgrpo" else None,
        "seconds": {"sft": sft_seconds, "rl": rl_seconds, "control": control_seconds},
        "eval_problems": len(eval_set),
        "demonstrations": len(demos),
        "table": rows,
    }
    if control_model is not None:
        control = rows["SFT continued (control)"]
        summary.update(
            {
                "pass1_control": control["pass1_greedy"],
                f"pass{k}_control": control[f"pass{k}"],
                "reward_control": control["reward_mean"],
            }
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    metrics = read_metrics(out)
    plot_series(metrics, "reward_mean", out / "reward.png", "RL: mean reward of sampled completions")
    plot_series(metrics, "kl", out / "kl.png", "RL: KL(policy ‖ SFT reference) per completion")
    print(format_table(rows, k))
    print(f"wrote {out / 'summary.json'}, {out / 'metrics.jsonl'}, {out / 'model'}, reward.png, kl.png")
    return summary


def format_table(rows: dict[str, dict], k: int) -> str:
    lines = [f"{'model':32s} {'greedy pass@1':>14s} {f'pass@{k}':>9s} {'mean reward':>12s}"]
    for name, r in rows.items():
        lines.append(
            f"{name:32s} {100 * r['pass1_greedy']:13.1f}% {100 * r[f'pass{k}']:8.1f}% {r['reward_mean']:12.3f}"
        )
    return "\n".join(lines)
