"""RLOO's leave-one-out baseline, ``rloo`` (docs/algorithms.md#advantage-estimators)."""

from __future__ import annotations

import torch
from torch import Tensor

from divalign.advantages.registry import Advantages, EstimatorInputs, register
from divalign.groups import group_sum


def leave_one_out(rewards: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """RLOO (arXiv 2402.14740): a_i = r_i − mean of the other responses' rewards in the group.

    Needs at least two responses per group; the advantages of each group sum to zero.
    """
    ones = torch.ones_like(rewards)
    counts = group_sum(ones, group_ids, num_groups)
    if bool((counts[counts > 0] < 2).any()):
        raise ValueError("RLOO needs at least 2 responses per prompt (num_generations >= 2)")
    sums = group_sum(rewards, group_ids, num_groups)[group_ids]
    n = counts[group_ids]
    return rewards - (sums - rewards) / (n - 1)


@register("rloo", min_group_size=2)
def rloo(inputs: EstimatorInputs, options) -> Advantages:
    """Leave-one-out baseline (RLOO)."""
    return Advantages(leave_one_out(inputs.sequence_rewards(), inputs.group_ids, inputs.num_groups))
