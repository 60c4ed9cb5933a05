"""Model-level evaluation metrics: sampled KL to a reference, perplexity, response lengths, win rate."""

from __future__ import annotations

import math
import statistics

import torch

from divalign.data.encoding import prompt_ids
from divalign.data.tokens import pad
from divalign.generation import make_sampler
from divalign.models import completion_logprobs, segment_logprobs
from divalign.objectives.kl import k3


@torch.no_grad()
def kl_to_reference(model, reference, tokenizer, prompts: list[str | tuple[str, bool]], *, samples_per_prompt: int = 4,
                    max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> dict:
    """KL(π ‖ π_ref) over completions sampled from π, estimated per completion by Σ_t log π(y_t|·) − log π_ref(y_t|·)
    (k1, unbiased) with its standard error, and by Σ_t k3 (unbiased, non-negative, lower variance). A prompt is a
    string, or (text, whether the chat template wrote it)."""
    sampler = make_sampler(model, tokenizer)
    k1_values, k3_values = [], []
    for start in range(0, len(prompts), batch_size):
        ids = [prompt_ids(tokenizer, *(p if isinstance(p, tuple) else (p, False)))
               for p in prompts[start:start + batch_size]]
        rollout = sampler.generate(ids, max_new_tokens, temperature, num_samples=samples_per_prompt,
                                   seeds=[seed * 1_000_003 + start + i for i in range(len(ids))])
        batch = rollout.sequences()
        logp, _ = completion_logprobs(model, batch, temperature, group_size=samples_per_prompt)
        ref, _ = completion_logprobs(reference, batch, temperature, group_size=samples_per_prompt)
        mask = rollout.completion_mask
        k1_values += ((logp - ref) * mask).sum(-1).tolist()
        k3_values += (k3(logp, ref) * mask).sum(-1).tolist()
    n = len(k1_values)
    return {"kl": statistics.fmean(k1_values), "kl_stderr": statistics.stdev(k1_values) / math.sqrt(n) if n > 1
            else 0.0, "kl_k3": statistics.fmean(k3_values), "kl_samples": n}


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 16) -> dict:
    """exp of the mean negative log-likelihood per predicted token over ``texts`` (each cut to ``max_length``)."""
    nll, tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer(t)["input_ids"][:max_length] for t in texts[start:start + batch_size]]
        ids, mask = pad(rows, tokenizer.pad_token_id, device=device)
        logp = segment_logprobs(model, ids, mask)
        nll -= float(logp.sum())
        tokens += int((mask[:, 1:] * mask[:, :-1]).sum())
    mean = nll / max(tokens, 1)
    return {"perplexity": math.exp(min(mean, 50.0)), "nll_per_token": mean, "tokens": tokens}


def length_stats(lengths: list[int], truncated: list[bool] | None = None) -> dict:
    ordered = sorted(lengths)
    out = {"length_mean": statistics.fmean(ordered), "length_median": statistics.median(ordered),
           "length_p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "length_max": ordered[-1]}
    if truncated is not None:
        out["truncated_fraction"] = sum(truncated) / len(truncated)
    return out


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (ties enter ``successes`` as halves)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(scores_a: list[float], scores_b: list[float], tie_tolerance: float = 1e-6) -> dict:
    """Share of prompts where A's response scores above B's (a tie counts half), with a 95 % Wilson interval."""
    wins = sum(a > b + tie_tolerance for a, b in zip(scores_a, scores_b))
    ties = sum(abs(a - b) <= tie_tolerance for a, b in zip(scores_a, scores_b))
    return win_rate_from_counts(wins, ties, len(scores_a) - wins - ties)


def win_rate_from_counts(wins: int, ties: int, losses: int) -> dict:
    """Win rate of A over B from counted comparisons, a tie counting half, with its 95 % Wilson interval."""
    n = wins + ties + losses
    low, high = wilson_interval(wins + 0.5 * ties, n)
    return {"win_rate": (wins + 0.5 * ties) / n if n else float("nan"), "win_rate_ci95": [low, high], "wins": wins,
            "ties": ties, "losses": losses, "comparisons": n}
