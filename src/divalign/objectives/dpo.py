"""DPO (Rafailov et al., arXiv 2305.18290; docs/algorithms.md#dpo), with conservative label smoothing (cDPO).

With Δ = log π_θ(y|x) − log π_ref(y|x) summed over the completion's tokens and h = β(Δ_w − Δ_l):

    ℓ = −(1 − ε)·log σ(h) − ε·log σ(−h),

ε = 0 being plain DPO (TRL ``loss_type="sigmoid"``). The mean is over the *whole* batch (``num_pairs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from divalign.objectives.batch import PairBatch
from divalign.objectives.registry import register


def check_beta(beta: float, name: str) -> None:
    if not beta > 0:
        raise ValueError(f"{name}.beta must be > 0 (got {beta})")


@dataclass
class DPOOptions:
    """Options of ``dpo``."""

    beta: float = 0.1
    """Inverse temperature of the implicit reward beta * log(pi/pi_ref)."""
    label_smoothing: float = 0.0
    """cDPO: assumed probability that a preference label is flipped (0 for plain DPO)."""

    def __post_init__(self):
        check_beta(self.beta, "dpo")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("dpo.label_smoothing must be in [0, 0.5)")


@register("dpo", family="pairs", options=DPOOptions)
def dpo_loss(batch: PairBatch, options: DPOOptions):
    logits = options.beta * (batch.chosen_ratio - batch.rejected_ratio)
    eps = options.label_smoothing
    per_pair = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return batch.mean(per_pair), batch.metrics(options.beta, logits)
