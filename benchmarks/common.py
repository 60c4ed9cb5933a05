"""Pieces the benchmarks share: the speed model and the TRL settings and interleaving of the speed benchmarks;
the demo's SFT start, one RL run from it, and its evaluation for the quality benchmarks."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import torch


def add_process_options(parser) -> None:
    """--threads and --default-allocator, for the speed benchmarks."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--default-allocator", action="store_true",
                        help="keep glibc's malloc defaults (by default the process keeps freed memory, as the "
                             "divalign command line does; process-wide, so TRL gets the same setting)")


def apply_process_options(args) -> dict:
    """Apply the options of :func:`add_process_options`; returns them for the result line."""
    from divalign.allocator import keep_freed_memory

    torch.set_num_threads(args.threads)
    return {"threads": args.threads, "allocator_keeps_freed": False if args.default_allocator else keep_freed_memory()}


def emit(result: dict, out: str | None) -> None:
    """Print a benchmark's JSON line and append it to ``out`` when given."""
    import json

    print(json.dumps(result), flush=True)
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps(result) + "\n")


def add_trl_checkpointing_option(parser) -> None:
    """--trl-checkpointing: TRL 1.16 turns gradient checkpointing on by default (GRPOConfig, DPOConfig), recomputing
    activations in its backward; the speed benchmarks turn it off unless asked, so both sides do the same
    arithmetic (results before 2026-12-07 ran TRL with it on)."""
    parser.add_argument("--trl-checkpointing", action="store_true",
                        help="run TRL with its default gradient checkpointing (off here: divalign does not recompute)")


def add_share_prompt_option(parser) -> None:
    parser.add_argument("--share-prompt", choices=("auto", "always", "never"), default="auto",
                        help="where running each group's prompt once costs a pass of its own (the compiled "
                             "forward, scoring without gradient): where models.prompt_sharing_pays says it pays "
                             "(auto), always or never; the default training pass always shares")


def apply_share_prompt_option(args) -> None:
    if args.share_prompt != "auto":
        from divalign.models import forward

        forward.PROMPT_SHARING_BREAK_EVEN = 0 if args.share_prompt == "always" else float("inf")


def speed_model(workdir: str) -> str:
    """The 0.5M-parameter Llama folder both speed benchmarks use (hidden 128, MLP 512, 2 layers, 4 heads, 2 KV
    heads, character vocabulary)."""
    import os

    from divalign.charlm import write_tiny_model

    return write_tiny_model(os.path.join(workdir, "model"), hidden_size=128, intermediate_size=512, num_layers=2,
                            num_heads=4, num_kv_heads=2, max_positions=64)


def synthetic_words(count: int) -> list[str]:
    """``count`` distinct lower-case letter strings, shortest first (a, ..., z, aa, ab, ...): a word vocabulary."""
    import itertools
    import string

    words = (''.join(w) for n in itertools.count(1) for w in itertools.product(string.ascii_lowercase, repeat=n))
    return list(itertools.islice(words, count))


def word_tokenizer(vocab_size: int):
    """A real ``tokenizers`` WordLevel tokenizer of exactly ``vocab_size`` entries (<pad>, <s>, </s>, <unk>, then
    :func:`synthetic_words`), split on whitespace, <s> put before every text, wrapped as a Hugging Face fast
    tokenizer: every id 0..vocab_size-1 is a token, so any sampled id decodes (to a word, or to nothing for the
    special tokens when they are skipped)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from divalign.charlm import BOS, EOS, PAD, UNK

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *synthetic_words(vocab_size - 4)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def realistic_model(folder: str, *, vocab: int, hidden: int, intermediate: int, layers: int, heads: int,
                    kv_heads: int, tie: bool, max_positions: int, seed: int = 0) -> tuple[str, int]:
    """A randomly initialised Llama of a real model's shape with a :func:`word_tokenizer` of ``vocab`` entries,
    saved as a Hugging Face folder; returns the folder and the parameter count."""
    from divalign.charlm import tiny_llama
    from divalign.models import param_count, save_model

    tokenizer = word_tokenizer(vocab)
    model = tiny_llama(tokenizer, hidden_size=hidden, intermediate_size=intermediate, num_layers=layers,
                       num_heads=heads, num_kv_heads=kv_heads, max_positions=max_positions, seed=seed,
                       tie_embeddings=tie)
    save_model(model, tokenizer, folder)
    return str(folder), param_count(model)


#: TRL settings both speed benchmarks use: CPU, fp32, no logging, saving or progress bar, seed 0.
TRL_CPU_QUIET = {"use_cpu": True, "bf16": False, "fp16": False, "report_to": "none", "save_strategy": "no",
                 "logging_steps": 10**6, "disable_tqdm": True, "seed": 0}


def stories260k(folder: Path) -> Path:
    """The real TinyStories stories260K checkpoint converted (once) to a Hugging Face folder."""
    if not (folder / "model.safetensors").exists():
        from divalign.convert.llama2c import convert

        convert("data:tinyllamas_stories260K/stories260K.bin", "data:tinyllamas_stories260K/tok512.bin", folder)
    return folder


def demo_sft_model(folder: Path, threads: int = 2) -> Path:
    """Train (once) the demo's SFT model into ``folder``: a 1M-parameter Llama on 1,000 worked problems."""
    if (folder / "model" / "model.safetensors").exists():
        return folder / "model"
    from divalign.charlm import build_char_tokenizer, tiny_llama
    from divalign.commands.demo import DemoConfig, sft_config
    from divalign.data.sft import Demonstration, render_demonstrations
    from divalign.tasks.arithmetic import ArithmeticTask
    from divalign.trainers.loop import run_steps
    from divalign.trainers.sft import SFTTrainer

    torch.set_num_threads(threads)
    demo = DemoConfig()
    task = ArithmeticTask()
    tokenizer = build_char_tokenizer("0123456789+-=")
    model = tiny_llama(tokenizer, hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4, num_kv_heads=2,
                       max_positions=32, seed=0)
    demos = [Demonstration(ex.prompt, ex.answer) for ex in task.demonstrations(demo.demonstrations, seed=0)]
    trainer = SFTTrainer(model, tokenizer, render_demonstrations(tokenizer, demos), sft_config(demo, demo.sft_steps))
    run_steps(trainer, folder, demo.sft_steps, show_progress=False)
    return folder / "model"


def rl_trainer(start: Path, objective: str, options: dict | None, seed: int, steps: int, reward=None,
               preference=None, **overrides):
    """An online trainer from ``start`` with the demo's RL settings (and each method's own defaults)."""
    from divalign.commands.demo import MAX_NEW_TOKENS, DemoConfig
    from divalign.config import build
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.tasks.arithmetic import ArithmeticTask, TaskPrompts
    from divalign.trainers.online import OnlineTrainer, RLConfig

    demo = DemoConfig()
    values = {"model": str(start), "task": "arithmetic", "objective": objective, "steps": steps,
              "prompts_per_step": demo.prompts_per_step, "num_generations": demo.num_generations,
              "max_new_tokens": MAX_NEW_TOKENS, "learning_rate": demo.rl_learning_rate, "seed": seed,
              "progress": False, **overrides}
    if options is not None:
        values[objective] = options
    config = build(RLConfig, values)
    task = ArithmeticTask()
    policy, tokenizer = load_causal_lm(start)
    return OnlineTrainer(config, policy, tokenizer, TaskPrompts(task, seed), reward or task.reward,
                         reference=frozen_copy(policy), preference=preference)


def rl_run(start: Path, objective: str, options: dict | None, seed: int, steps: int, work: Path, **kwargs):
    """One RL run; returns (policy, tokenizer, metrics rows, seconds)."""
    from divalign.trainers.loop import run_steps

    trainer = rl_trainer(start, objective, options, seed, steps, **kwargs)
    policy, tokenizer = trainer.policy, trainer.tokenizer
    if work.exists():
        shutil.rmtree(work)
    t0 = time.perf_counter()
    rows = run_steps(trainer, work, steps, show_progress=False)
    return policy, tokenizer, rows, time.perf_counter() - t0


def arithmetic_scores(policy, tokenizer, seed: int = 0, problems: int = 300) -> dict:
    """Greedy pass@1 and pass@8 on the demo's held-out problems, and greedy pass@1 on their hardest third
    (most carries and borrows, :meth:`ArithmeticTask.difficulty`)."""
    from divalign.commands.demo import MAX_NEW_TOKENS
    from divalign.eval.passk import evaluate
    from divalign.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask()
    examples = task.eval_set(problems)
    overall = evaluate(policy, tokenizer, examples, task.reward, max_new_tokens=MAX_NEW_TOKENS, k=8, seed=seed)
    hardest = sorted(examples, key=lambda e: (task.difficulty(e), abs(int(e.answer))), reverse=True)[: problems // 3]
    hard = evaluate(policy, tokenizer, hardest, task.reward, max_new_tokens=MAX_NEW_TOKENS, k=1, samples=1,
                    seed=seed)
    return {"pass1": overall["pass1_greedy"], "pass8": overall["pass8"], "pass1_hardest_third": hard["pass1_greedy"]}


class Interleaved:
    """Runs divalign's step k right after TRL's step k (a TRL callback) and summarises the per-step ratios, so that
    drifts in machine speed hit both sides alike."""

    def __init__(self, divalign_step):
        self.divalign_step = divalign_step  #: step index → the divalign trainer's row for that step
        self.trl_times: list[float] = []
        self.divalign_times: list[float] = []
        self.divalign_rows: list[dict] = []

    def callback(self):
        from transformers import TrainerCallback

        runner = self

        class Interleave(TrainerCallback):
            def on_step_begin(self, *args, **kwargs):
                self.started = time.perf_counter()

            def on_step_end(self, args, state, *rest, **kwargs):
                runner.trl_times.append(time.perf_counter() - self.started)
                start = time.perf_counter()
                runner.divalign_rows.append(runner.divalign_step(state.global_step - 1))
                runner.divalign_times.append(time.perf_counter() - start)

        return Interleave()

    def summary(self, warmup: int, parts: tuple[str, ...]) -> dict:
        """Medians after ``warmup`` steps (whose divalign seconds, compilation included, are reported apart)."""
        ratios = [d / t for d, t in zip(self.divalign_times[warmup:], self.trl_times[warmup:])]
        quartiles = statistics.quantiles(ratios, n=4)
        rows = self.divalign_rows[warmup:]
        return {
            "steps_measured": len(ratios),
            "trl_ms_median": 1000 * statistics.median(self.trl_times[warmup:]),
            "divalign_ms_median": 1000 * statistics.median(self.divalign_times[warmup:]),
            "divalign_warmup_s": round(sum(self.divalign_times[:warmup]), 2),
            "ratio_median": statistics.median(ratios),
            "ratio_p25_p75": [quartiles[0], quartiles[2]],
            "divalign_parts_ms": {k: round(1000 * statistics.median(r[k] for r in rows), 2) for k in parts},
        }
