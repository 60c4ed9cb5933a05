"""PPO for RLHF with a value head and GAE (Schulman et al., arXiv 1707.06347; InstructGPT, arXiv 2203.02155), as
TRL's ``PPOTrainer`` sets it up (docs/algorithms.md#ppo).

The trainer builds, per token, the KL-penalised reward r_t = −c_KL·kl_t (k1: log π_old − log π_ref, or k3;
:meth:`PPOOptions.kl_penalty`) with the sequence's task or reward-model score added at its last token, then GAE(γ, λ)
advantages and returns from the value head's predictions at sampling time (the ``gae`` estimator of
:mod:`divalign.advantages`, which also makes the trainer keep a value head), whitened over the batch. The loss,
averaged over completion tokens:

    L_pg = −min(ρ_t·A_t, clip(ρ_t, 1 ± ε)·A_t),   L_v = ½·max((V_t − R_t)², (clip(V_t, V_old ± ε_v) − R_t)²),
    L = L_pg + c_v·L_v.

The value head is one linear layer on the policy's last hidden state (a shared trunk, unlike TRL's separate
critic model: one forward pass instead of two); it starts at zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from divalign.advantages.gae import GAEOptions
from divalign.objectives import kl
from divalign.objectives.aggregation import aggregate, token_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.interface import KLPenalty, OnlineOptions
from divalign.objectives.registry import register


@dataclass
class PPOOptions(OnlineOptions, GAEOptions):
    """Options of ``ppo``."""

    epsilon: float = 0.2
    """Clip range of the token ratio."""
    value_epsilon: float = 0.2
    """Clip range of the value prediction around its value at sampling time."""
    vf_coef: float = 0.1
    """Weight c_v of the value loss."""
    kl_coef: float = 0.05
    """Weight of the per-token KL penalty in the reward (0: none, no reference model needed)."""
    kl_estimator: str = "k1"
    """Per-token KL estimate in the reward: k1 (log-ratio), k2, k3 or abs."""

    advantage: ClassVar[str] = "gae"
    own_estimator_only: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        kl.check_estimator(self.kl_estimator, "kl_estimator")

    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    def kl_penalty(self) -> KLPenalty | None:
        return KLPenalty(self.kl_coef, self.kl_estimator) if self.kl_coef > 0 else None


@register("ppo", family="online", options=PPOOptions)
def ppo_loss(batch: OnlineBatch, options: PPOOptions):
    if batch.token_advantages is None or batch.values is None:
        raise ValueError("ppo needs per-token advantages, returns and value predictions")
    log_ratio = (batch.logprobs - batch.old_logprobs).clamp(-kl.LOG_RATIO_LIMIT, kl.LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    adv = batch.token_advantages
    eps = options.epsilon
    pg = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    clipped_values = batch.old_values + (batch.values - batch.old_values).clamp(-options.value_epsilon,
                                                                                options.value_epsilon)
    vf = 0.5 * torch.max((batch.values - batch.returns) ** 2, (clipped_values - batch.returns) ** 2)
    pg_loss, vf_loss = aggregate(pg, batch, "token_mean"), aggregate(vf, batch, "token_mean")
    with torch.no_grad():
        clipped = ((ratio < 1 - eps) & (adv < 0)) | ((ratio > 1 + eps) & (adv > 0))
        value_clipped = (batch.values - batch.old_values).abs() > options.value_epsilon
    metrics = {"policy_loss": float(pg_loss.detach()), "value_loss": float(vf_loss.detach()),
               "clip_fraction": token_share(clipped.float(), batch),
               "value_clip_fraction": token_share(value_clipped.float(), batch)}
    return pg_loss + options.vf_coef * vf_loss, metrics
