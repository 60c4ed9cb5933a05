"""One training step of every objective under one way of splitting the batch, recording the gradients the optimizer
sees. Run by tests/test_split_invariance.py as a plain process or under ``torchrun``:

    python tests/split_steps.py OUT.pt --micro N [--dtype float64] [--fast-path]

``--micro`` is the micro-batch size in the trainer's own unit (rows for SFT, pairs or responses for preference
and reward training, prompts for online RL; 0: a process's whole share). The main process writes
``{case: [flattened gradient of each optimizer step]}`` to OUT.pt.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from divalign import objectives
from divalign.objectives import aggregation
from divalign.charlm import ARITHMETIC_ALPHABET, build_char_tokenizer, tiny_llama
from divalign.data.chat import Rendered
from divalign.data.preferences import Pair, Unpaired
from divalign.models import frozen_copy
from divalign.parallel import finish, start
from divalign.rewards import PerSample
from divalign.tasks.arithmetic import ArithmeticConfig, ArithmeticTask, TaskPrompts
from divalign.trainers.online import OnlineTrainer, RLConfig
from divalign.trainers.optim import Optimization
from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer
from divalign.trainers.reward_model import RewardModelTrainer, RMConfig
from divalign.trainers.sft import SFTConfig, SFTTrainer

COMMON = {"max_grad_norm": 0.0, "learning_rate": 1e-3, "output_dir": "unused", "device": "cpu", "dtype": "fp32"}


def model(tokenizer, dtype, head=False):
    torch.manual_seed(0)
    m = tiny_llama(tokenizer, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
    if head:
        from transformers import LlamaForSequenceClassification

        torch.manual_seed(0)
        m = LlamaForSequenceClassification(m.config.__class__(**{**m.config.to_dict(), "num_labels": 1}))
        m.config.pad_token_id = tokenizer.pad_token_id
    return m.to(dtype)


def online_cases():
    """(case name, objective, options) for every online objective and every aggregation mode."""
    cases = []
    for name in objectives.names(("online",)):
        options_class = objectives.get(name).options
        modes = list(aggregation.MODES) if name == "grpo" else [None]
        for mode in modes:
            options = options_class(aggregation=mode) if mode else options_class()
            cases.append((f"{name}" + (f"/{mode}" if mode else ""), name, options))
    cases.append(("fgrpo/sequence level", "fgrpo", objectives.get("fgrpo").options(level="sequence",
                                                                                    aggregation="token_mean")))
    return cases


def preference_cases():
    cases = [(name, name, objectives.get(name).options()) for name in objectives.names(("pairs",))]
    for preset in ("none", "kldo", "bco", "hdo"):
        cases.append((f"fdo/{preset}", "fdo", objectives.get("fdo").options(preset=preset)))
    cases.append(("kto", "kto", objectives.get("kto").options()))
    return cases


def digits(completion: str, answer) -> float:
    """A reward that varies within every group (an untrained model's answers are all wrong), so advantages are
    not zero and the gradient is signal, not rounding."""
    return sum(ch.isdigit() for ch in completion) / 6


def pairs(n=8):
    return [Pair(f"{i}+{i}=", str(2 * i), str(2 * i + 1)) for i in range(n)]


def unpaired(n=8):
    return [Unpaired(f"{i}+1=", str(i + 1 + (i % 3 == 0)), i % 3 != 0) for i in range(n)]


@contextlib.contextmanager
def recording(into: list):
    """Record the gradient the optimizer sees at every step."""
    original = Optimization.step

    def step(self, loss):
        into.append(torch.cat([p.grad.flatten() for p in self.params if p.grad is not None]).clone())
        return original(self, loss)

    Optimization.step = step
    try:
        yield
    finally:
        Optimization.step = original


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--micro", type=int, default=0)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--fast-path", action="store_true")
    args = parser.parse_args()
    world = start("cpu")
    dtype = getattr(torch, args.dtype)
    tok = build_char_tokenizer(ARITHMETIC_ALPHABET)
    fast = {"fast_path": args.fast_path}
    results: dict[str, list[torch.Tensor]] = {}

    def one_step(name, trainer):
        grads: list[torch.Tensor] = []
        with recording(grads):
            trainer.step(0)
        results[name] = grads

    rendered = [Rendered(f"{i}+{i}=", str(2 * i) * (1 + i % 3), False) for i in range(8)]
    one_step("sft", SFTTrainer(model(tok, dtype), tok, rendered, SFTConfig(
        batch_size=8, micro_batch_size=args.micro, **fast, **COMMON), world=world))
    one_step("rm", RewardModelTrainer(model(tok, dtype, head=True), tok, RMConfig(
        batch_size=8, micro_batch_size=args.micro, **COMMON), pairs(), world=world))
    for name, objective, options in preference_cases():
        data = pairs() if objectives.get(objective).family == "pairs" else unpaired()
        micro = 0 if getattr(options, "whole_batch_only", False) else args.micro
        policy = model(tok, dtype)
        config = PreferenceConfig(objective=objective, objective_options=options, batch_size=8,
                                  micro_batch_size=micro, precompute_reference=False, **fast, **COMMON)
        one_step(name, PreferenceTrainer(policy, tok, config, data, frozen_copy(policy), world=world))
    task = ArithmeticTask(ArithmeticConfig())
    preference = [Unpaired(f"{i}+1=", str(i + 1), True) for i in range(4)] + unpaired(4)
    for name, objective, options in online_cases():
        config = RLConfig(objective=objective, objective_options=options, prompts_per_step=4, num_generations=4,
                          max_new_tokens=6, micro_batch_prompts=args.micro, preference_batch_size=8, steps=2,
                          minibatches=2 if objective == "ppo" else 1, ppo_epochs=2 if objective == "ppo" else 1,
                          **fast, **COMMON)
        policy = model(tok, dtype)
        one_step(name, OnlineTrainer(config, policy, tok, TaskPrompts(task), PerSample(digits), frozen_copy(policy),
                                     preference, world=world))
    if world.main:
        torch.save(results, args.out)
    finish()  # waits for the main process's save


if __name__ == "__main__":
    main()
