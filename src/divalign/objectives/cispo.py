"""CISPO: clipped importance-sampling-weight policy optimisation (MiniMax-M1, arXiv 2506.13585;
docs/algorithms.md#cispo).

The importance weight itself is clipped and its gradient stopped, so every token keeps a policy gradient, however
far its ratio has moved (PPO's clip zeroes the gradient of such tokens):

    ℓ_{i,t} = −sg[clip(ρ_{i,t}, w_min, w_max)]·A_i·log π_θ(y_{i,t}|·),   ∇ℓ = −clip(ρ)·A·∇log π_θ,

reduced by ``aggregation`` (default ``token_mean`` over the whole batch, as the paper and TRL), plus the optional
KL term of :mod:`divalign.objectives.policy`.

Choices: the cap is an absolute weight, ``max_weight`` (the paper's 1 + ε_high^IS; TRL's ``epsilon_high`` for
``loss_type="cispo"``, recommended 5.0 after ScaleRL, arXiv 2510.13786, which is the default here); ``min_weight``
is the paper's lower bound 1 − ε_low^IS, 0 (none) by default as in the paper's runs. The value of the loss is
−w·A·log π, not a surrogate of the return; only its gradient has meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from divalign.objectives.aggregation import token_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.policy import PolicyOptions, reduce, token_advantages, token_ratio, with_kl
from divalign.objectives.registry import register


@dataclass
class CISPOOptions(PolicyOptions):
    """Options of the ``cispo`` objective."""

    max_weight: float = 5.0
    """Upper cap on the importance weight (TRL's epsilon_high for cispo; ScaleRL recommends 5)."""
    min_weight: float = 0.0
    """Lower cap on the importance weight (0: none)."""
    aggregation: str = "token_mean"
    """Token-level mean over the batch (the paper's normalisation)."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.min_weight < self.max_weight:
            raise ValueError(f"need 0 <= min_weight < max_weight (got {self.min_weight}, {self.max_weight})")


@register("cispo", family="online", options=CISPOOptions)
def cispo_loss(batch: OnlineBatch, options: CISPOOptions):
    ratio = token_ratio(batch)
    weight = ratio.clamp(options.min_weight, options.max_weight).detach()
    policy = -weight * token_advantages(batch) * batch.logprobs
    with torch.no_grad():
        capped = (ratio > options.max_weight) | (ratio < options.min_weight)
    metrics = {"policy_loss": float(reduce(policy.detach(), batch, options)),
               "clip_fraction": token_share(capped.float(), batch)}
    return reduce(with_kl(policy, batch, options, ratio), batch, options), metrics
