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
    """Dispatch by name: ``group`` (GRPO), ``group_mean`` (Dr. GRPO, no std), ``rloo``."""
    if name == "group":
        return group_normalized(rewards, group_ids, num_groups, scale=True)
    if name == "group_mean":
        return group_normalized(rewards, group_ids, num_groups, scale=False)
    if name == "rloo":
        return leave_one_out(rewards, group_ids, num_groups)
    raise UserError(f"unknown advantage estimator '{name}' (expected one of: {', '.join(ESTIMATORS)})")
