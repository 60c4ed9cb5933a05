"""SAPO: soft adaptive policy optimisation (Qwen, arXiv 2511.20347; docs/algorithms.md#sapo).

A smooth gate replaces the hard clip: per token

    ℓ_{i,t} = −f_τ(ρ_{i,t})·A_i,   f_τ(ρ) = σ(τ·(ρ − 1))·4/τ,   τ = τ_pos if A_i > 0 else τ_neg,

whose gradient, −4·σ(1 − σ)·ρ·A·∇log π, equals the unclipped policy gradient at ρ = 1 and fades smoothly as ρ
moves away (faster for larger τ; a larger τ_neg damps negative updates sooner). Reduced by ``aggregation``
(default ``seq_mean_token_mean``, as TRL and verl), plus the optional KL term of :mod:`divalign.objectives.policy`.

Choices: TRL 1.16's temperatures are the defaults (τ_pos 1.0, τ_neg 1.05); verl's recipe uses 10 for both. The
log-ratio is clamped to ±20 before exp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from divalign.objectives.batch import OnlineBatch
from divalign.objectives.policy import PolicyOptions, reduce, token_advantages, token_ratio, with_kl
from divalign.objectives.registry import register


@dataclass
class SAPOOptions(PolicyOptions):
    """Options of the ``sapo`` objective."""

    temperature_pos: float = 1.0
    """Gate temperature τ for tokens of responses with a positive advantage."""
    temperature_neg: float = 1.05
    """Gate temperature τ for the others."""

    def __post_init__(self):
        super().__post_init__()
        if not (self.temperature_pos > 0 and self.temperature_neg > 0):
            raise ValueError("temperature_pos and temperature_neg must be > 0")


def soft_gate(ratio, temperature):
    """f_τ(ρ) = σ(τ·(ρ − 1))·4/τ: value 2/τ and slope 1 at ρ = 1."""
    return torch.sigmoid(temperature * (ratio - 1.0)) * (4.0 / temperature)


@register("sapo", family="online", options=SAPOOptions)
def sapo_loss(batch: OnlineBatch, options: SAPOOptions):
    ratio = token_ratio(batch)
    adv = token_advantages(batch)
    temperature = torch.where(adv > 0, options.temperature_pos, options.temperature_neg).to(ratio.dtype)
    policy = -soft_gate(ratio, temperature) * adv
    metrics = {"policy_loss": float(reduce(policy.detach(), batch, options))}
    return reduce(with_kl(policy, batch, options, ratio), batch, options), metrics
