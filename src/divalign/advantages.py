"""Advantage estimators for grouped rollouts (one scalar reward per response).

Pure functions of tensors. Rows are responses; ``group_ids`` tags the prompt each belongs to.
"""

from __future__ import annotations

import torch
from torch import Tensor

from divalign.errors import UserError
from divalign.groups import group_mean, group_sum

#: Added to the group standard deviation before dividing (as TRL does), so near-constant groups stay finite.
STD_EPS = 1e-4
#: Relative spread below which a group's rewards count as equal (float rounding of the mean is ~1e-7).
EQUAL_TOLERANCE = 1e-6


def group_normalized(rewards: Tensor, group_ids: Tensor, num_groups: int, scale: bool = True) -> Tensor:
    """GRPO (arXiv 2402.03300): a_i = (r_i − mean_g(r)) / (std_g(r) + 1e-4).

    The standard deviation is the population one (divide by G), so with G = 2 and binary rewards the
    advantages are ±1 (TRL uses the sample std, a factor √((G−1)/G) apart). ``scale=False`` gives the
    Dr. GRPO advantage r_i − mean_g(r) (arXiv 2503.20783). A group whose rewards are all equal gets zeros.
    """
    mean = group_mean(rewards, group_ids, num_groups)[group_ids]
    centered = rewards - mean
    std = group_mean(centered * centered, group_ids, num_groups).sqrt()[group_ids]
    # A group whose rewards are equal up to rounding of the mean carries no signal: exactly zero, not ±1e-4.
    centered = torch.where(std > EQUAL_TOLERANCE * (1 + mean.abs()), centered, torch.zeros_like(centered))
    return centered / (std + STD_EPS) if scale else centered


def leave_one_out(rewards: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """RLOO (arXiv 2402.14740): a_i = r_i − mean of the other responses' rewards in the group.

    Needs at least two responses per group; the advantages of each group sum to zero.
    """
    ones = torch.ones_like(rewards)
    counts = group_sum(ones, group_ids, num_groups)
    if bool((counts[counts > 0] < 2).any()):
        raise UserError("RLOO needs at least 2 responses per prompt (num_generations >= 2)")
    sums = group_sum(rewards, group_ids, num_groups)[group_ids]
    n = counts[group_ids]
    return rewards - (sums - rewards) / (n - 1)


ESTIMATORS = ("group", "group_mean", "rloo")


def compute(name: str, rewards: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """Dispatch the sequence-level estimators by name: ``group`` (GRPO), ``group_mean`` (Dr. GRPO, no std),
    ``rloo``. (PPO's per-token :func:`gae` and DaGRPO's :func:`distinct_pairs` need more inputs.)"""
    if name == "group":
        return group_normalized(rewards, group_ids, num_groups, scale=True)
    if name == "group_mean":
        return group_normalized(rewards, group_ids, num_groups, scale=False)
    if name == "rloo":
        return leave_one_out(rewards, group_ids, num_groups)
    raise UserError(f"unknown advantage estimator '{name}' (expected one of: {', '.join(ESTIMATORS)})")


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over completion tokens (Schulman et al., arXiv 1506.02438).

    ``rewards``, ``values``, ``mask``: (B, T). δ_t = r_t + γ·V_{t+1} − V_t (V after the last real token is 0),
    A_t = δ_t + γλ·A_{t+1}, returns R_t = A_t + V_t. Padding positions get 0.
    """
    rewards, values, mask = rewards * mask, values * mask, mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the masked entries (PPO's advantage whitening); padding stays 0."""
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    var = (((values - mean) * mask) ** 2).sum() / count
    return (values - mean) * torch.rsqrt(var + eps) * mask


def distinct_pairs(rewards: Tensor, scores: Tensor, group_ids: Tensor, num_groups: int, threshold: float,
                   scale: bool = True) -> Tensor:
    """DaGRPO-style advantages (arXiv 2512.06337, rebuilt; see :mod:`divalign.objectives.dagrpo`).

    The group-relative advantage is a mean of pairwise differences, r_i − mean(r) = (1/G)·Σ_j (r_i − r_j). Here a
    pair (i, j) of the same group only counts when its fine-grained scores differ by at least ``threshold``
    (|s_i − s_j| ≥ τ): a_i = Σ_j m_ij (r_i − r_j) / Σ_j m_ij, divided by the group's reward standard deviation
    when ``scale``. A response with no distinct partner gets 0.
    """
    same_group = group_ids[:, None] == group_ids[None, :]
    distinct = same_group & ((scores[:, None] - scores[None, :]).abs() >= threshold)
    diffs = (rewards[:, None] - rewards[None, :]) * distinct
    counts = distinct.sum(-1)
    adv = torch.where(counts > 0, diffs.sum(-1) / counts.clamp(min=1), torch.zeros_like(rewards))
    if not scale:
        return adv
    centered = rewards - group_mean(rewards, group_ids, num_groups)[group_ids]
    std = group_mean(centered * centered, group_ids, num_groups).sqrt()[group_ids]
    return adv / (std + STD_EPS)
