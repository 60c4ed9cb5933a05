"""``divalign demo``: what online RL with a verifier adds over supervised fine-tuning, on CPU in minutes.

1. Build a character tokenizer and a tiny Llama, and train it from scratch with SFT on a *limited* set of
   arithmetic demonstrations until it is partially skilled (the "before" model).
2. From there, online RL (f-GRPO by default) on fresh training prompts scored only by the verifier.
3. Control: from the same SFT model, SFT continued on the same demonstrations for the same wall time, in a process
   of its own beside RL, each with half the threads (a step of so small a model gains well under 2× from a second
   thread, so two runs side by side end sooner than one after the other).
4. Evaluate all three on the same held-out problems (greedy pass@1, sampled pass@k, mean reward), print a
   table and write ``summary.json``, the metrics, the models and plots into the output folder.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from divalign.charlm import build_char_tokenizer, tiny_llama
from divalign.commands.common import check_output_dir, configure_process, create_run_dir, positive
from divalign.config import build
from divalign.data.chat import Rendered
from divalign.errors import RunFailed, UserError
from divalign.eval.passk import evaluate
from divalign.models import frozen_copy, load_causal_lm, param_count
from divalign.plots import plot_series
from divalign.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, TaskPrompts
from divalign.tracking import read_metrics
from divalign.trainers.loop import FINAL_MODEL, run_steps
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
    rl_steps: int = 1200
    """RL steps (the reward still rises there; chosen to keep the demo near 5 minutes: see BENCHMARKS.md)."""
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
    """Also train the SFT control for the same time as RL, beside it: each then gets half the threads."""
    threads: int = 0
    """CPU threads for torch (0: torch's default); RL and the control share them."""
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


def task_and_demonstrations(config: DemoConfig) -> tuple[ArithmeticTask, list[Rendered]]:
    task = ArithmeticTask(ArithmeticConfig(operands="2", max_value=99, operators="+-"))
    demos = task.demonstrations(config.demonstrations, seed=config.seed)
    return task, [Rendered(ex.prompt, ex.answer, False) for ex in demos]


class ControlProcess:
    """The SFT control in a process of its own (spawned, so that it shares no thread pool with RL): from the SFT
    model saved in ``out/sft``, SFT continued on the same demonstrations with ``threads`` threads, from the moment
    RL starts (:meth:`wait_until_ready`) until it ends (:meth:`finish`); it saves its model into ``out/control``."""

    def __init__(self, config: DemoConfig, out: Path, threads: int):
        context = multiprocessing.get_context("spawn")
        self.ready, self.stop, self.seconds = context.Event(), context.Event(), context.Value("d", 0.0)
        self.process = context.Process(
            target=continue_sft, args=(asdict(config), str(out), threads, self.ready, self.stop, self.seconds),
            name="divalign-demo-control", daemon=True,
        )
        self.process.start()

    def wait_until_ready(self) -> None:
        while not self.ready.wait(0.1):
            self._check_alive()

    def finish(self) -> float:
        """Stop the control after its current step, wait for its model; its training seconds."""
        self.stop.set()
        self.process.join()
        self._check_alive()
        return self.seconds.value

    def cancel(self) -> None:
        if self.process.is_alive():
            self.stop.set()
            self.process.join(timeout=60)
            if self.process.is_alive():
                self.process.terminate()

    def _check_alive(self) -> None:
        if not self.process.is_alive() and self.process.exitcode != 0:
            raise RunFailed(f"the SFT control stopped with exit code {self.process.exitcode} (its error is above)")


def continue_sft(config: dict, out: str, threads: int, ready, stop, seconds) -> None:
    """The body of :class:`ControlProcess`."""
    demo = DemoConfig(**{**config, "progress": False})  # the parent's progress bar is RL's
    configure_process(threads, progress=False)
    _, demos = task_and_demonstrations(demo)
    model, tokenizer = load_causal_lm(Path(out) / "sft" / FINAL_MODEL)
    model.requires_grad_(True).train()
    trainer = SFTTrainer(model, tokenizer, demos, sft_config(demo, 10**9))
    ready.set()
    t0 = time.perf_counter()
    run_steps(trainer, Path(out) / "control", 10**9, show_progress=False, stop=stop.is_set)
    seconds.value = time.perf_counter() - t0


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

    task, demos = task_and_demonstrations(config)
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

    trainer = SFTTrainer(model, tokenizer, demos, sft_config(config, config.sft_steps))
    t0 = time.perf_counter()
    run_steps(trainer, out / "sft", config.sft_steps, show_progress=config.progress, postfix_keys=("loss",))
    sft_seconds = time.perf_counter() - t0
    sft_model = frozen_copy(model)
    policy = model.requires_grad_(True)

    threads = torch.get_num_threads()
    control = ControlProcess(config, out, max(1, threads - threads // 2)) if config.control else None
    try:
        trainer = OnlineTrainer(rl_cfg, policy, tokenizer, TaskPrompts(task, config.seed), task.reward,
                                reference=sft_model)
        if control is not None:
            torch.set_num_threads(max(1, threads // 2))
            control.wait_until_ready()
        t0 = time.perf_counter()
        run_steps(trainer, out, config.rl_steps, show_progress=config.progress)
        rl_seconds = time.perf_counter() - t0
        control_seconds = None if control is None else control.finish()
    finally:
        if control is not None:
            control.cancel()
        torch.set_num_threads(threads)
    control_model = None if control is None else load_causal_lm(out / "control" / FINAL_MODEL)[0]

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
