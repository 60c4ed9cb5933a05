"""Task accuracy of a model on (prompt, answer) examples: greedy pass@1 and the unbiased pass@k."""

from __future__ import annotations

import math

import torch

from divalign.data.prompts import Example
from divalign.generation import make_sampler


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, arXiv 2107.03374):
    1 − C(n − c, k) / C(n, k), computed as a product to stay exact for large n."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples (got {n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    examples: list[Example],
    reward_fn,
    *,
    max_new_tokens: int,
    k: int = 8,
    samples: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 512,
    fast: bool = True,
) -> dict:
    """Greedy pass@1, sampled pass@k (``samples`` ≥ k draws per prompt) and mean sampled reward.

    ``reward_fn`` scores a batch: ``reward_fn(prompts, completions, answers)`` (see :mod:`divalign.rewards`).
    """
    samples = samples or k
    was_training = model.training
    model.eval()
    sampler = make_sampler(model, tokenizer, fast=fast)
    prompts = [tokenizer(ex.prompt)["input_ids"] for ex in examples]
    greedy_rewards, lengths = [], []
    for start in range(0, len(examples), batch_size):
        rollout = sampler.generate(prompts[start : start + batch_size], max_new_tokens, greedy=True)
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        chunk = examples[start : start + batch_size]
        greedy_rewards += reward_fn([ex.prompt for ex in chunk], texts, [ex.answer for ex in chunk])
        lengths += rollout.lengths.tolist()
    generator = torch.Generator().manual_seed(seed)
    sampled_rewards = []
    per_batch = max(1, batch_size // samples)
    for start in range(0, len(examples), per_batch):
        chunk = examples[start : start + per_batch]
        ids = [p for p in prompts[start : start + per_batch] for _ in range(samples)]
        rollout = sampler.generate(ids, max_new_tokens, temperature, generator=generator)
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        answers = [ex.answer for ex in chunk for _ in range(samples)]
        sampled_rewards += reward_fn([ex.prompt for ex in chunk for _ in range(samples)], texts, answers)
    model.train(was_training)
    correct = [sum(r >= 1.0 for r in sampled_rewards[i * samples : (i + 1) * samples]) for i in range(len(examples))]
    n = len(examples)
    return {
        "pass1_greedy": sum(r >= 1.0 for r in greedy_rewards) / n,
        f"pass{k}": sum(pass_at_k(samples, c, k) for c in correct) / n,
        "reward_mean": sum(sampled_rewards) / len(sampled_rewards),
        "greedy_length": sum(lengths) / n,
        "num_problems": n,
    }
