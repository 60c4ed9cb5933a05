"""Seconds per GRPO or DPO step at a real model's shape: divalign against TRL, interleaved in one process.

The speed benchmarks (grpo_speed.py, dpo_speed.py) use a 0.5M-parameter model, where Python overhead weighs most;
this one trains a randomly initialised Llama of a small real model's shape. Defaults: vocabulary 32,000, hidden 512,
MLP 1536, 8 layers, 8 heads, 2 KV heads, untied output head (about 57M parameters); ``--shape deep`` is
SmolLM-135M-like (hidden 576, MLP 1536, 30 layers, 9 heads, 3 KV heads, vocabulary 49,152, tied: about 135M);
``--shape tiny`` is the speed benchmarks' size (hidden 128, MLP 512, 2 layers, 4 heads, 2 KV heads, 88 entries:
about 0.51M) with this script's word tokenizer; ``--shape qwen0.5b`` has Qwen2.5-0.5B's dimensions (hidden 896, MLP
4864, 24 layers, 14 heads, 2 KV heads, vocabulary 151,936, tied: about 494M, as a Llama: no attention biases);
--vocab, --hidden, --intermediate, --layers, --heads, --kv-heads and --tie/--no-tie change one dimension. Max
positions 2048 (or prompt + completion when longer). The tokenizer is a real ``tokenizers`` WordLevel tokenizer
whose vocabulary is exactly the model's (<pad>, <s>, </s>, <unk> and synthetic letter words, one token per
word), so every sampled id decodes; <s> starts every prompt. Prompts are ``--prompt-tokens`` tokens (default 32,
<s> included) of random words, fp32 on both sides.

GRPO (``--algo grpo``): the settings of grpo_speed.py at this shape: 4 prompts × 8 completions (``--group-size``)
of at most ``--new-tokens`` tokens (default 64), temperature 1, β = 0.04 (a frozen reference on both sides), lr
1e-5, one update per batch, GRPO loss (per-sequence token mean). The reward (characters of the completion / 100) varies
with the sampled words, so both sides really update, and falls when a completion ends early. Both sides stop a
completion at </s> (TRL masks what follows; divalign does too) and stop decoding once every row has ended; neither
can be told to ignore it. Sampling from a random model over V words gives </s> with probability about 1/V per
token, so nearly every completion runs to the budget (32 × 64 / 32,000: one early end every 16 steps or so);
each side's mean completion length and share of completions ended by </s> over the measured steps are in the
result line, so that the comparison stays honest.

DPO (``--algo dpo``): the settings of dpo_speed.py with a live reference on both sides, at this shape: 400
synthetic pairs, 8 pairs per step, β 0.1, lr 1e-5, one optimizer step per batch; chosen and rejected are
``--new-tokens`` tokens each (that many minus one words, then </s>, which both sides append), max length prompt
+ response, so nothing is cut.

TRL 1.16 turns gradient checkpointing on by default (GRPOConfig and DPOConfig), which recomputes activations in the
backward; here it is off unless ``--trl-checkpointing`` is given, so that both sides do the same arithmetic.

TRL's step k runs, then divalign's step k, so drifts in machine speed hit both alike; the result is the median of
the per-step ratios (divalign / TRL) and their quartiles, after ``--warmup`` steps.

``--memory`` runs each side alone instead, TRL then divalign, each in a child process of its own (this script
with a hidden ``--only trl|divalign``) for ``--steps`` steps, and reports each child's peak resident memory from
the operating system when it exits (``wait4``'s ``ru_maxrss``, as lora_memory.py), with its median step time.

    pip install -c constraints.txt -e '.[bench]'   # TRL only for this benchmark
    python benchmarks/realistic_speed.py --algo grpo --steps 12
    python benchmarks/realistic_speed.py --algo dpo --steps 12
    python benchmarks/realistic_speed.py --algo grpo --steps 12 --new-tokens 256
    python benchmarks/realistic_speed.py --algo grpo --steps 12 --shape deep
    python benchmarks/realistic_speed.py --algo grpo --steps 6 --memory   # peak memory per side
    PYTHONPATH=<checkout>/src python benchmarks/realistic_speed.py --alone --steps 5   # divalign alone, per phase

Writes a JSON line to stdout (and appends it to --out if given).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import (
    TRL_CPU_QUIET,
    Interleaved,
    add_process_options,
    add_share_prompt_option,
    add_trl_checkpointing_option,
    apply_process_options,
    apply_share_prompt_option,
    emit,
    realistic_model,
    synthetic_words,
)

SHAPES = {
    "default": {"vocab": 32000, "hidden": 512, "intermediate": 1536, "layers": 8, "heads": 8, "kv_heads": 2,
                "tie": False},
    "deep": {"vocab": 49152, "hidden": 576, "intermediate": 1536, "layers": 30, "heads": 9, "kv_heads": 3,
             "tie": True},
    "tiny": {"vocab": 88, "hidden": 128, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2, "tie": False},
    "qwen0.5b": {"vocab": 151936, "hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2,
                 "tie": True},
}
PROMPTS_PER_STEP = 4
GRPO_PARTS = ("generate_s", "score_s", "reference_s", "forward_backward_s", "optimizer_s")
DPO_PARTS = ("forward_backward_s", "optimizer_s")
PROMPTS = 400


def length_reward(text: str) -> float:
    return len(text) / 100


def random_text(rng: random.Random, words: list[str], count: int) -> str:
    return " ".join(rng.choice(words) for _ in range(count))


def make_prompts(words: list[str], prompt_tokens: int) -> list[str]:
    rng = random.Random(0)
    return [random_text(rng, words, prompt_tokens - 1) for _ in range(PROMPTS)]  # <s> is the prompt's first token


def make_pairs(words: list[str], prompt_tokens: int, response_tokens: int) -> list[tuple[str, str, str]]:
    rng = random.Random(0)
    return [(random_text(rng, words, prompt_tokens - 1), " " + random_text(rng, words, response_tokens - 1),
             " " + random_text(rng, words, response_tokens - 1)) for _ in range(PROMPTS)]  # </s> ends responses


# ---------------------------------------------------------------------------------------------------------- GRPO
def grpo_divalign(folder: str, prompts: list[str], args):
    """divalign's GRPO trainer with the settings of the module docstring."""
    from divalign.config import build
    from divalign.data.prompts import DatasetPrompts, Example
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.rewards import PerSample
    from divalign.trainers.online import OnlineTrainer, RLConfig

    config = build(RLConfig, {"model": folder, "objective": "grpo", "steps": args.steps,
                              "prompts_per_step": PROMPTS_PER_STEP, "num_generations": args.group_size,
                              "max_new_tokens": args.new_tokens, "temperature": 1.0,
                              "learning_rate": 1e-5, "grpo": {"beta": 0.04}, "progress": False,
                              "compile": args.compile})
    policy, tokenizer = load_causal_lm(folder)
    source = DatasetPrompts([Example(p, "") for p in prompts], seed=0)
    return OnlineTrainer(config, policy, tokenizer, source, PerSample(lambda text, answer: length_reward(text)),
                         reference=frozen_copy(policy))


def grpo_trl(folder: str, prompts: list[str], args, workdir: str, callbacks: list, lengths: list):
    """TRL's GRPOTrainer with the same settings; appends (mean completion length, share ended by </s>) per step to
    ``lengths``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    config = GRPOConfig(output_dir=os.path.join(workdir, "trl"),
                        per_device_train_batch_size=PROMPTS_PER_STEP * args.group_size,
                        num_generations=args.group_size,
                        max_completion_length=args.new_tokens, temperature=1.0, beta=0.04, learning_rate=1e-5,
                        loss_type="grpo", num_iterations=1, gradient_accumulation_steps=1, max_steps=args.steps,
                        gradient_checkpointing=args.trl_checkpointing, **TRL_CPU_QUIET)

    def trl_reward(prompts, completions, completion_ids, **kwargs):  # completion_ids: cut after </s>
        lengths.append((statistics.mean(len(ids) for ids in completion_ids),
                        statistics.mean(bool(ids) and ids[-1] == tokenizer.eos_token_id for ids in completion_ids)))
        return [length_reward(c) for c in completions]

    return GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(folder), reward_funcs=trl_reward, args=config,
                       train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                       callbacks=callbacks)


def grpo_lengths(trl: list[tuple[float, float]], rows: list[dict], warmup: int) -> dict:
    """Mean completion length (tokens, </s> included) and share of completions ended by </s>, per side."""
    return {"completion_length_mean": {"trl": statistics.mean(m for m, _ in trl[warmup:]),
                                       "divalign": statistics.mean(r["completion_length"] for r in rows[warmup:])},
            "ended_by_eos": {"trl": statistics.mean(e for _, e in trl[warmup:]),
                             "divalign": 1 - statistics.mean(r["truncated_fraction"] for r in rows[warmup:])}}


# ----------------------------------------------------------------------------------------------------------- DPO
def dpo_divalign(folder: str, pairs, args):
    """divalign's DPO trainer with the settings of the module docstring (live reference)."""
    from divalign.config import build
    from divalign.data.preferences import Pair
    from divalign.models import frozen_copy, load_causal_lm
    from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer

    policy, tokenizer = load_causal_lm(folder)
    config = build(PreferenceConfig, {"model": folder, "objective": "dpo", "batch_size": 8,
                                      "max_length": args.prompt_tokens + args.new_tokens, "learning_rate": 1e-5,
                                      "steps": args.steps, "precompute_reference": False, "dpo": {"beta": 0.1},
                                      "progress": False, "compile": args.compile})
    return PreferenceTrainer(policy, tokenizer, config, [Pair(*p) for p in pairs], frozen_copy(policy))


def dpo_trl(folder: str, pairs, args, workdir: str, callbacks: list):
    """TRL's DPOTrainer with the same settings (its own reference copy, live)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(output_dir=os.path.join(workdir, "trl"), per_device_train_batch_size=8,
                       max_length=args.prompt_tokens + args.new_tokens, beta=0.1, learning_rate=1e-5,
                       max_steps=args.steps, precompute_ref_log_probs=False,
                       gradient_checkpointing=args.trl_checkpointing, **TRL_CPU_QUIET)
    data = Dataset.from_dict({"prompt": [p for p, _, _ in pairs], "chosen": [c for _, c, _ in pairs],
                              "rejected": [r for _, _, r in pairs]})
    return DPOTrainer(model=AutoModelForCausalLM.from_pretrained(folder), args=config, train_dataset=data,
                      processing_class=AutoTokenizer.from_pretrained(folder), callbacks=callbacks)


# ------------------------------------------------------------------------------------------------------- running
def inputs(args):
    words = synthetic_words(args.vocab - 4)  # the tokenizer's words, in id order after the 4 special tokens
    if args.algo == "grpo":
        return make_prompts(words, args.prompt_tokens)
    return make_pairs(words, args.prompt_tokens, args.new_tokens)


def summary(timing: Interleaved, warmup: int, parts: tuple[str, ...]) -> dict:
    """:meth:`Interleaved.summary`; with a single measured step (a smoke run), whose ratio is then its own
    quartiles (``statistics.quantiles`` needs two points)."""
    measured = len(timing.trl_times) - warmup
    if measured >= 2:
        return timing.summary(warmup, parts)
    once = copy.copy(timing)
    once.trl_times, once.divalign_times, once.divalign_rows = (
        x + x[warmup:] for x in (timing.trl_times, timing.divalign_times, timing.divalign_rows))
    return {**once.summary(warmup, parts), "steps_measured": measured}


def interleaved(args, folder: str, workdir: str) -> dict:
    data = inputs(args)
    if args.algo == "grpo":
        trainer = grpo_divalign(folder, data, args)
        timing, lengths = Interleaved(trainer.step), []
        grpo_trl(folder, data, args, workdir, [timing.callback()], lengths).train()
        return {**summary(timing, args.warmup, GRPO_PARTS),
                **grpo_lengths(lengths, timing.divalign_rows, args.warmup),
                "divalign_reward_last": timing.divalign_rows[-1]["reward_mean"]}
    t = time.perf_counter()
    trainer = dpo_divalign(folder, data, args)
    da_setup = time.perf_counter() - t
    timing = Interleaved(trainer.step)
    t = time.perf_counter()
    trl = dpo_trl(folder, data, args, workdir, [timing.callback()])
    trl_setup = time.perf_counter() - t
    trl.train()
    return {"reference": "live", **summary(timing, args.warmup, DPO_PARTS),
            "setup_s": {"trl": trl_setup, "divalign": da_setup}}


def alone(args, folder: str, workdir: str) -> dict:
    """One side only (a ``--memory`` child): its median step time after the warm-up, and its completion lengths."""
    data = inputs(args)
    warmup = args.warmup if args.steps > args.warmup else 0
    out = {"side": args.only}
    if args.only == "trl":
        timing, lengths = Interleaved(lambda step: {}), []  # times TRL's steps; nothing runs between them
        if args.algo == "grpo":
            grpo_trl(folder, data, args, workdir, [timing.callback()], lengths).train()
            out["completion_length_mean"] = statistics.mean(m for m, _ in lengths[warmup:])
        else:
            dpo_trl(folder, data, args, workdir, [timing.callback()]).train()
        seconds = timing.trl_times
    else:
        trainer = (grpo_divalign if args.algo == "grpo" else dpo_divalign)(folder, data, args)
        seconds, rows = [], []
        for step in range(args.steps):
            t = time.perf_counter()
            rows.append(trainer.step(step))
            seconds.append(time.perf_counter() - t)
        if args.algo == "grpo":
            out["completion_length_mean"] = statistics.mean(r["completion_length"] for r in rows[warmup:])
        parts = GRPO_PARTS if args.algo == "grpo" else DPO_PARTS
        out["divalign_parts_ms"] = {k: round(1000 * statistics.median(r[k] for r in rows[warmup:]), 2) for k in parts}
    return {**out, "step_ms_median": 1000 * statistics.median(seconds[warmup:])}


def child_argv(args, side: str, folder: str) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "--only", side, "--folder", folder, "--algo", args.algo,
            "--vocab", str(args.vocab), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
            "--group-size", str(args.group_size),
            "--threads", str(args.threads), "--share-prompt", args.share_prompt]
    return (argv + ["--default-allocator"] * args.default_allocator + ["--compile"] * args.compile
            + ["--trl-checkpointing"] * args.trl_checkpointing)


def peak_rss(argv: list[str], workdir: str, name: str) -> tuple[float, dict]:
    """Peak resident memory (MiB) of one process running ``argv``, and the JSON line it printed last."""
    out, err = os.path.join(workdir, f"{name}.out"), os.path.join(workdir, f"{name}.err")
    with open(out, "w") as stdout, open(err, "w") as stderr:  # files, not pipes: a full pipe would block the child
        process = subprocess.Popen(argv, cwd=os.path.dirname(os.path.abspath(__file__)), stdout=stdout,
                                   stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        with open(err) as handle:
            raise SystemExit(f"{' '.join(argv)} failed:\n{handle.read()[-4000:]}")
    with open(out) as handle:
        line = handle.read().strip().splitlines()[-1]
    return usage.ru_maxrss / 1024, json.loads(line)  # ru_maxrss is in KiB on Linux


def memory(args, folder: str, workdir: str) -> dict:
    peaks, runs = {}, {}
    for side in ("trl", "divalign"):
        peaks[side], runs[side] = peak_rss(child_argv(args, side, folder), workdir, side)
        print(f"{side}: peak {peaks[side]:.0f} MiB, {runs[side]['step_ms_median']:.0f} ms/step", file=sys.stderr,
              flush=True)
    result = {"peak_rss_mib": peaks, "peak_ratio": peaks["divalign"] / peaks["trl"],
              "step_ms_median": {side: run["step_ms_median"] for side, run in runs.items()},
              "divalign_parts_ms": runs["divalign"]["divalign_parts_ms"]}
    if args.algo == "grpo":
        result["completion_length_mean"] = {side: run["completion_length_mean"] for side, run in runs.items()}
    return result


def shape(args) -> dict:
    """The model's shape: the preset's, with the dimensions given on the command line instead."""
    preset = SHAPES[args.shape]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return {key: getattr(args, key) for key in preset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("grpo", "dpo"), default="grpo")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="default",
                        help="default: 57M parameters, 8 layers; deep: SmolLM-135M-like, 30 layers, tied; "
                             "tiny: the speed benchmarks' 0.5M; qwen0.5b: Qwen2.5-0.5B's dimensions")
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--tie", action=argparse.BooleanOptionalAction, default=None,
                        help="tie the output head to the embeddings")
    parser.add_argument("--new-tokens", type=int, default=64,
                        help="GRPO: completion budget; DPO: chosen and rejected length, </s> included")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length, <s> included")
    parser.add_argument("--group-size", type=int, default=8, help="GRPO: completions per prompt (4 prompts a step)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="leading steps left out of the medians")
    add_process_options(parser)
    parser.add_argument("--compile", action="store_true", help="divalign compiles its forward")
    add_share_prompt_option(parser)
    parser.add_argument("--alone", action="store_true",
                        help="time divalign alone (no TRL in the process): to compare two checkouts, run it "
                             "alternately with PYTHONPATH=<checkout>/src")
    parser.add_argument("--memory", action="store_true",
                        help="run each side alone in a process of its own and report its peak resident memory")
    add_trl_checkpointing_option(parser)
    parser.add_argument("--out", default=None)
    parser.add_argument("--only", choices=("trl", "divalign"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.alone:
        args.only = "divalign"
    if args.steps <= args.warmup and not (args.memory or args.only):
        parser.error("--steps must be larger than --warmup (the medians leave the warm-up steps out)")
    if min(args.prompt_tokens, args.new_tokens, args.group_size) < 2:
        parser.error("--prompt-tokens, --new-tokens and --group-size must be at least 2")
    dims = shape(args)
    process = apply_process_options(args)
    apply_share_prompt_option(args)

    workdir = tempfile.mkdtemp(prefix="realistic-speed-")
    try:
        if args.only and not args.alone:  # a --memory child: the parent's model folder, one side, one JSON line
            print(json.dumps(alone(args, args.folder, workdir)), flush=True)
            return
        positions = max(2048, args.prompt_tokens + args.new_tokens)
        folder, parameters = realistic_model(os.path.join(workdir, "model"), max_positions=positions, **dims)
        print(f"model: {parameters:,} parameters {dims}", file=sys.stderr, flush=True)
        kind = "realistic_memory" if args.memory else "realistic_alone" if args.alone else "realistic_step_time"
        result = {"benchmark": kind, "algo": args.algo,
                  "date": time.strftime("%Y-%m-%d"), "shape": {"preset": args.shape, **dims},
                  "parameters": parameters, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                  "steps": args.steps, "warmup": args.warmup, **process, "divalign_compile": args.compile,
                  "trl_gradient_checkpointing": args.trl_checkpointing}
        if args.algo == "grpo":
            result.update(share_prompt=args.share_prompt, prompts_per_step=PROMPTS_PER_STEP,
                          group_size=args.group_size)
        if args.alone:
            result.update(alone(args, folder, workdir))
        else:
            result.update(memory(args, folder, workdir) if args.memory else interleaved(args, folder, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
