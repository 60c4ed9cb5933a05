"""GMPO: geometric-mean policy optimisation (Zhao et al., arXiv 2507.20673; docs/algorithms.md#gmpo).

The geometric instead of the arithmetic mean of the token-level importance-weighted terms, with the clip applied
per token in log space, one-sided by the sign of the advantage (PPO's pessimism written in log space):

    c_{i,t} = min(log ρ_{i,t}, ε_high)  if A_i > 0,   max(log ρ_{i,t}, −ε_low)  otherwise,
    ℓ_i = −exp((1/|y_i|)·Σ_t c_{i,t})·A_i,

averaged over responses (``seq_mean_token_mean`` of the per-token broadcast), plus the optional KL term of
:mod:`divalign.objectives.policy` averaged per response. The geometric mean is less sensitive to a few outlier
token ratios than the arithmetic one, which is what lets the paper widen the clip range to (e^−0.4, e^0.4).

Choices: the paper's ε_low = ε_high = 0.4 (log space) are the defaults, as in TRL's experimental GMPOTrainer and
verl's ``geo_mean``. The log-ratio is clamped to ±20 first. A response without tokens contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.objectives import kl
from divalign.objectives.aggregation import token_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.policy import PolicyOptions, reduce, with_kl
from divalign.objectives.registry import register


@dataclass
class GMPOOptions(PolicyOptions):
    """Options of the ``gmpo`` objective; the clip ranges are in log space: ρ is kept in (e^−ε_low, e^ε_high)."""

    epsilon_low: float = 0.4
    """Lower clip of the token log-ratio (for negative advantages)."""
    epsilon_high: float = 0.4
    """Upper clip of the token log-ratio (for positive advantages)."""

    def __post_init__(self):
        super().__post_init__()
        if self.epsilon_low < 0 or self.epsilon_high < 0:
            raise ValueError("epsilon_low and epsilon_high must be >= 0")


def clipped_log_ratio(log_ratio: Tensor, advantages: Tensor, low: float, high: float) -> Tensor:
    """Per token: min(log ρ, high) where A > 0, max(log ρ, −low) elsewhere."""
    return torch.where(advantages > 0, log_ratio.clamp(max=high), log_ratio.clamp(min=-low))


@register("gmpo", family="online", options=GMPOOptions)
def gmpo_loss(batch: OnlineBatch, options: GMPOOptions):
    log_ratio = (batch.logprobs - batch.old_logprobs).clamp(-kl.LOG_RATIO_LIMIT, kl.LOG_RATIO_LIMIT)
    adv = batch.advantages.unsqueeze(-1)
    clipped = clipped_log_ratio(log_ratio, adv, options.epsilon_low, options.epsilon_high)
    geometric = torch.exp(batch.sequence_sum(clipped) / batch.lengths.clamp(min=1))
    policy = (-geometric * batch.advantages).unsqueeze(-1).expand_as(log_ratio)
    metrics = {"policy_loss": float(reduce(policy.detach(), batch, options)),
               "clip_fraction": token_share((clipped != log_ratio).float(), batch)}
    return reduce(with_kl(policy, batch, options), batch, options), metrics
