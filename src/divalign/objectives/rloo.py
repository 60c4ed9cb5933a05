"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., arXiv 2402.14740), as TRL implements it
(docs/algorithms.md#rloo).

Advantage (:func:`divalign.advantages.leave_one_out`): a_i = R_i − mean of the other responses' R in the group,
with the KL penalty folded into the reward, R_i = r_i − β·Σ_t (log π_old(y_t|·) − log π_ref(y_t|·)) (the trainer
applies it before computing advantages: :meth:`RLOOOptions.kl_penalty`). Loss per response with the *sequence* ratio
ρ_i = exp(Σ_t log π_θ − Σ_t log π_old) (log ρ clamped to ±20):

    ℓ_i = −min(ρ_i·a_i, clip(ρ_i, 1 − ε, 1 + ε)·a_i),   L = mean_i ℓ_i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from divalign.objectives import kl
from divalign.objectives.aggregation import sequence_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.interface import KLPenalty, OnlineOptions
from divalign.objectives.registry import register


@dataclass
class RLOOOptions(OnlineOptions):
    """Options of ``rloo``."""

    epsilon: float = 0.2
    """Clip range of the sequence ratio."""
    beta: float = 0.05
    """Weight of the KL penalty folded into the reward (0: none, no reference model needed)."""
    kl_estimator: str = "k1"
    """Per-token KL estimate summed into the penalty: k1 (TRL's), k2, k3 or abs."""

    advantage: ClassVar[str] = "rloo"

    def __post_init__(self):
        if self.epsilon < 0 or self.beta < 0:
            raise ValueError("rloo: epsilon and beta must be >= 0")
        kl.check_estimator(self.kl_estimator, "kl_estimator")

    def needs_reference(self) -> bool:
        return self.beta > 0

    def kl_penalty(self) -> KLPenalty | None:
        return KLPenalty(self.beta, self.kl_estimator) if self.beta > 0 else None


@register("rloo", family="online", options=RLOOOptions)
def rloo_loss(batch: OnlineBatch, options: RLOOOptions):
    log_ratio = batch.sequence_sum(batch.logprobs - batch.old_logprobs).clamp(-kl.LOG_RATIO_LIMIT, kl.LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    adv = batch.advantages
    low, high = 1.0 - options.epsilon, 1.0 + options.epsilon
    per_sequence = -torch.min(ratio * adv, ratio.clamp(low, high) * adv)
    clipped = ((ratio < low) & (adv < 0)) | ((ratio > high) & (adv > 0))
    return per_sequence.sum() / batch.num_sequences, {"clip_fraction": sequence_share(clipped.float(), batch)}
