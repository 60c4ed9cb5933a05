"""DPPO: divergence proximal policy optimisation ("Rethinking the trust region in LLM reinforcement learning",
arXiv 2602.04879; docs/algorithms.md#dppo) — a trust region measured by a divergence between the new
and the old policy instead of by the ratio.

The divergence at each sampled token is approximated on the binary distribution (this token / any other token):
with p = π_θ(y_t|·) and q = π_old(y_t|·),

    TV:  p − q;            KL:  KL(Bern(q) ‖ Bern(p)) = q·log(q/p) + (1 − q)·log((1 − q)/(1 − p)).

A token takes part in the update only while the step it asks for stays inside the region: for A > 0 while
p − q ≤ δ_high (TV) or KL ≤ δ_high or p ≤ q (KL); for A < 0 while p − q ≥ −δ_low or KL ≤ δ_low or p ≥ q. Inside,
the gradient is the policy gradient weighted by the truncated importance ratio:

    ℓ_{i,t} = −m_{i,t}·sg[min(ρ_{i,t}, C)]·A_i·log π_θ(y_{i,t}|·),

reduced by ``aggregation`` (default ``token_mean``), plus the optional KL-to-reference term of
:mod:`divalign.objectives.policy`. Unlike the ratio clip, a low-probability token whose ratio swings is not cut
while its probability mass barely moves, and a high-probability token is cut once its mass moves by δ.

Choices: δ_low = δ_high = 0.2 (verl reads its ``clip_ratio`` options, 0.2 by default, as these thresholds) and
C = 20 (the truncation of the reference implementation we read) are the defaults; KL's 1 − p and 1 − q get +1e-8
as there. The mask is computed without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.objectives.aggregation import token_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.policy import PolicyOptions, reduce, token_advantages, token_ratio, with_kl
from divalign.objectives.registry import register

DIVERGENCES = ("tv", "kl")


@dataclass
class DPPOOptions(PolicyOptions):
    """Options of the ``dppo`` objective."""

    divergence: str = "tv"
    """Binary approximation of the divergence to the old policy: tv or kl."""
    delta_low: float = 0.2
    """Trust-region radius for tokens with a negative advantage."""
    delta_high: float = 0.2
    """Trust-region radius for tokens with a positive advantage."""
    max_weight: float = 20.0
    """Truncation C of the importance ratio that weighs the gradient."""
    aggregation: str = "token_mean"
    """Token-level mean over the batch."""

    def __post_init__(self):
        super().__post_init__()
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence: expected one of {', '.join(DIVERGENCES)} (got '{self.divergence}')")
        if not (self.delta_low > 0 and self.delta_high > 0 and self.max_weight > 0):
            raise ValueError("delta_low, delta_high and max_weight must be > 0")


def binary_kl(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """KL(Bern(q) ‖ Bern(p)) with p = e^logprobs, q = e^old_logprobs."""
    p, q = logprobs.exp(), old_logprobs.exp()
    return q * (old_logprobs - logprobs) + (1 - q) * torch.log((1 - q + 1e-8) / (1 - p + 1e-8))


def trust_region_mask(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, divergence: str,
                      delta_low: float, delta_high: float) -> Tensor:
    """1.0 where the token's update stays inside the region (see the module docstring), else 0.0."""
    p, q = logprobs.exp(), old_logprobs.exp()
    if divergence == "tv":
        inside_up, inside_down = (p - q) <= delta_high, (p - q) >= -delta_low
    else:
        kl = binary_kl(logprobs, old_logprobs)
        inside_up, inside_down = (kl <= delta_high) | (p <= q), (kl <= delta_low) | (p >= q)
    return torch.where(advantages > 0, inside_up, inside_down).to(logprobs.dtype)


@register("dppo", family="online", options=DPPOOptions)
def dppo_loss(batch: OnlineBatch, options: DPPOOptions):
    ratio = token_ratio(batch)
    adv = token_advantages(batch)
    with torch.no_grad():
        mask = trust_region_mask(batch.logprobs, batch.old_logprobs, adv, options.divergence, options.delta_low,
                                 options.delta_high)
    weight = ratio.clamp(max=options.max_weight).detach()
    policy = -mask * weight * adv * batch.logprobs
    metrics = {"policy_loss": float(reduce(policy.detach(), batch, options)),
               "clip_fraction": token_share(1.0 - mask, batch)}
    return reduce(with_kl(policy, batch, options, ratio), batch, options), metrics
