"""Task accuracy of a model on (prompt, answer) examples: greedy pass@1 and the unbiased pass@k."""

from __future__ import annotations

import math

from divalign.data.prompts import Example
from divalign.eval.generations import Decoding, GenerationCache, generate


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, arXiv 2107.03374):
    1 − C(n − c, k) / C(n, k), computed as a product to stay exact for large n."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples (got {n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def evaluate(model, tokenizer, examples: list[Example], reward_fn, *, max_new_tokens: int, k: int = 8,
             samples: int | None = None, temperature: float = 1.0, seed: int = 0, batch_size: int = 512,
             cache: GenerationCache | None = None, model_id: str = "model", show_progress: bool = False) -> dict:
    """Greedy pass@1, sampled pass@k (``samples`` ≥ k draws per prompt) and mean sampled reward.

    ``reward_fn`` scores a batch: ``reward_fn(prompts, completions, answers)`` (see :mod:`divalign.rewards`); a
    reward ≥ 1 counts as correct. Generations can be cached (``cache``) so an interrupted evaluation resumes.
    """
    samples = samples or k
    prompts = [ex.prompt for ex in examples]
    answers = [ex.answer for ex in examples]
    common = {"cache": cache, "model_id": model_id, "batch_size": batch_size, "show_progress": show_progress}
    greedy = generate(model, tokenizer, prompts, Decoding(max_new_tokens, greedy=True), desc="greedy", **common)
    greedy_rewards = reward_fn(prompts, [g["response"] for g in greedy], answers)
    sampled = generate(model, tokenizer, prompts, Decoding(max_new_tokens, greedy=False, temperature=temperature,
                                                           seed=seed), samples=samples, desc="sampled", **common)
    sampled_rewards = reward_fn([p for p in prompts for _ in range(samples)], [s["response"] for s in sampled],
                                [a for a in answers for _ in range(samples)])
    correct = [sum(r >= 1.0 for r in sampled_rewards[i * samples:(i + 1) * samples]) for i in range(len(examples))]
    n = len(examples)
    return {
        "pass1_greedy": sum(r >= 1.0 for r in greedy_rewards) / n,
        f"pass{k}": sum(pass_at_k(samples, c, k) for c in correct) / n,
        "reward_mean": sum(sampled_rewards) / len(sampled_rewards),
        "greedy_length": sum(g["tokens"] for g in greedy) / n,
        "num_problems": n,
    }
