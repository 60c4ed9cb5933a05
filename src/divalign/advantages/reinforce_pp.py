"""REINFORCE++ advantages: ``reinforce_pp`` and ``reinforce_pp_baseline`` (Hu et al., arXiv 2501.03262;
docs/algorithms.md#reinforce).

Per token, the reward is the KL penalty the objective folds in (−c·kl_t, with kl from π_old and π_ref), plus the
sequence's reward at its last real token; the advantage is the reward-to-go

    G_t = Σ_{s ≥ t} γ^{s−t}·r_s,

whitened over every real token of the batch (the global batch: the estimator sees the whole step on every process).
``reinforce_pp_baseline`` first subtracts each prompt's mean reward from its responses' rewards (the group
baseline of the paper's variant for reasoning tasks), then does the same.

Choices: γ = 1 by default (the paper's); the whitening variance is the biased one by default (OpenRLHF), or with
``unbiased_whitening`` Bessel's (verl's ``masked_whiten``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.advantages.gae import whiten
from divalign.advantages.registry import Advantages, EstimatorInputs, register
from divalign.groups import group_mean


@dataclass
class ReturnsOptions:
    """Options of the REINFORCE++ estimators (an objective that uses them inherits these)."""

    gamma: float = 1.0
    """Discount of the reward-to-go."""
    unbiased_whitening: bool = False
    """Whiten with the unbiased (N − 1) variance instead of the biased (N) one."""

    def __post_init__(self):
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1] (got {self.gamma})")


def reward_to_go(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = r_t + γ·G_{t'} over real tokens, t' the next real token (0 on masked positions), (B, T): the running
    return passes unchanged through masked positions between real tokens (a multi-turn episode's observation
    tokens), as verl's ``compute_reinforce_plus_plus_outcome_advantage``."""
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in reversed(range(token_rewards.shape[1])):
        real = mask[:, t]
        running = (token_rewards[:, t] + gamma * running) * real + running * (1 - real)
        returns[:, t] = running * real
    return returns


def _advantages(rewards: Tensor, inputs: EstimatorInputs, options: ReturnsOptions) -> Advantages:
    mask = inputs.mask.to(rewards.dtype)
    token_rewards = torch.zeros_like(mask) if inputs.kl is None else -inputs.kl_coef * inputs.kl * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    token_rewards[torch.arange(len(rewards)), last] += rewards * (mask.sum(-1) > 0)
    returns = reward_to_go(token_rewards, mask, options.gamma)
    token = whiten(returns, mask, unbiased=options.unbiased_whitening)
    return Advantages(torch.zeros_like(rewards), token, returns)


@register("reinforce_pp", options=ReturnsOptions)
def reinforce_pp(inputs: EstimatorInputs, options: ReturnsOptions) -> Advantages:
    """Reward-to-go with the token KL in the reward, whitened over the batch."""
    return _advantages(inputs.rewards, inputs, options)


@register("reinforce_pp_baseline", options=ReturnsOptions, min_group_size=2)
def reinforce_pp_baseline(inputs: EstimatorInputs, options: ReturnsOptions) -> Advantages:
    """The same after subtracting each prompt's mean reward."""
    centred = inputs.rewards - group_mean(inputs.rewards, inputs.group_ids, inputs.num_groups)[inputs.group_ids]
    return _advantages(centred, inputs, options)
