"""Generalised advantage estimation from a value head, ``gae`` (PPO; docs/algorithms.md#advantage-estimators)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.advantages.registry import Advantages, EstimatorInputs, register

HOLES = ("carry", "restart")


@dataclass
class GAEOptions:
    """Options of generalised advantage estimation (an objective with a value head inherits them)."""

    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """lambda of GAE."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the batch's tokens."""
    holes: str = "carry"
    """Masked positions between real tokens (a multi-turn episode's observation tokens): carry (values and the
    running advantage pass through them, as verl) or restart (the recursion ends the episode there)."""

    def __post_init__(self):
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("gamma and lam must be in [0, 1]")
        if self.holes not in HOLES:
            raise ValueError(f"holes: expected one of {', '.join(HOLES)} (got '{self.holes}')")


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95,
        holes: str = "carry") -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over completion tokens (Schulman et al., arXiv 1506.02438).

    ``rewards``, ``values``, ``mask``: (B, T). δ_t = r_t + γ·V_{t'} − V_t with t' the next real token (V after the
    last real token is 0), A_t = δ_t + γλ·A_{t'}, returns R_t = A_t + V_t. Masked positions get 0. ``holes``: at a
    masked position between real tokens, ``carry`` passes V and the running advantage through unchanged (verl's
    ``compute_gae_advantage_return``), ``restart`` resets them to 0 as at the end of an episode. Both agree on masks
    whose zeros are only padding after the last real token.
    """
    rewards, values, mask = rewards * mask, values * mask, mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        real = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        step = delta + gamma * lam * running
        keep = 1.0 - real if holes == "carry" else torch.zeros_like(real)
        running = step * real + running * keep
        next_value = values[:, t] * real + next_value * keep
        advantages[:, t] = running * real
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8, unbiased: bool = False) -> Tensor:
    """(x − mean) / √(var + eps) over the masked entries (PPO's advantage whitening); padding stays 0. The variance
    divides by the count N (biased, as TRL's PPO and OpenRLHF), or with ``unbiased`` by N − 1 (Bessel's
    correction, as verl's ``masked_whiten``)."""
    count = mask.sum()
    mean = (values * mask).sum() / count.clamp(min=1)
    var = (((values - mean) * mask) ** 2).sum() / (count - 1 if unbiased else count).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * mask


@register("gae", options=GAEOptions, needs_values=True)
def generalised(inputs: EstimatorInputs, options: GAEOptions) -> Advantages:
    """Per-token GAE from the value head: the KL penalty on every token, the reward at the last real token."""
    token_rewards = torch.zeros_like(inputs.values) if inputs.kl is None else -inputs.kl_coef * inputs.kl
    last = (inputs.mask.sum(-1).long() - 1).clamp(min=0)
    token_rewards[torch.arange(len(inputs.rewards)), last] += inputs.rewards
    adv, returns = gae(token_rewards, inputs.values, inputs.mask, options.gamma, options.lam, options.holes)
    if options.whiten_advantages:
        adv = whiten(adv, inputs.mask)
    return Advantages(torch.zeros_like(inputs.rewards), adv, returns)
