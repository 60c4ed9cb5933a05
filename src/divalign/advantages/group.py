"""Group-relative advantages: GRPO's normalised ``group`` and Dr. GRPO's centred ``group_mean``
(docs/algorithms.md#advantage-estimators)."""

from __future__ import annotations

import torch
from torch import Tensor

from divalign.advantages.registry import Advantages, EstimatorInputs, register, singleton_groups
from divalign.groups import group_mean, group_sum

#: Added to the group standard deviation before dividing (as TRL does), so near-constant groups stay finite.
STD_EPS = 1e-4
#: Relative spread below which a group's rewards count as equal (float rounding of the mean is ~1e-7).
EQUAL_TOLERANCE = 1e-6
#: What a group of one response gets: advantage 0 (it has nothing to be compared with), or verl's convention, its
#: raw reward (mean 0 and standard deviation 1 for such a group).
SINGLETON_GROUPS = ("zero", "raw")


def group_normalized(rewards: Tensor, group_ids: Tensor, num_groups: int, scale: bool = True,
                     singletons: str = "zero") -> Tensor:
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
    if singletons == "raw":
        alone = group_sum(torch.ones_like(rewards), group_ids, num_groups)[group_ids] == 1
        centered = torch.where(alone, rewards, centered)
        std = torch.where(alone, torch.ones_like(std), std)
    return centered / (std + STD_EPS) if scale else centered


def group_std(rewards: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """Each row's group standard deviation of the rewards (population, divide by G)."""
    centered = rewards - group_mean(rewards, group_ids, num_groups)[group_ids]
    return group_mean(centered * centered, group_ids, num_groups).sqrt()[group_ids]


@register("group", min_group_size=2, raw_singletons=True)
def group(inputs: EstimatorInputs, options) -> Advantages:
    """Group-normalised (GRPO)."""
    return Advantages(group_normalized(inputs.sequence_rewards(), inputs.group_ids, inputs.num_groups,
                                       singletons=singleton_groups(options)))


@register("group_mean", min_group_size=2, raw_singletons=True)
def centred(inputs: EstimatorInputs, options) -> Advantages:
    """Group-centred, no std division (Dr. GRPO)."""
    return Advantages(group_normalized(inputs.sequence_rewards(), inputs.group_ids, inputs.num_groups, scale=False,
                                       singletons=singleton_groups(options)))
