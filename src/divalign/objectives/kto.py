"""KTO (Ethayarajh et al., arXiv 2402.01306; docs/algorithms.md#kto), as TRL implements it.

With r = log π_θ(y|x) − log π_ref(y|x) (token sums) and the reference point
z₀ = max(0, mean(log π_θ(y'|x) − log π_ref(y'|x))) over mismatched pairs (x, y') of the whole batch, detached:

    ℓ = λ_D·(1 − σ(β(r − z₀))) on desirable,  λ_U·(1 − σ(β(z₀ − r))) on undesirable responses,

averaged over all responses of the whole batch. Without mismatched pairs (a batch of one) z₀ = 0. The trainer
computes the mismatched pairs' log-probabilities once per batch (:attr:`KTOOptions.mismatched_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from divalign.objectives.batch import UnpairedBatch
from divalign.objectives.interface import UnpairedOptions
from divalign.objectives.registry import register


@dataclass
class KTOOptions(UnpairedOptions):
    """Options of ``kto``."""

    beta: float = 0.1
    """Inverse temperature of the implicit reward."""
    desirable_weight: float = 1.0
    """lambda_D."""
    undesirable_weight: float = 1.0
    """lambda_U."""

    mismatched_pairs: ClassVar[bool] = True

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"kto.beta must be > 0 (got {self.beta})")


@register("kto", family="unpaired", options=KTOOptions)
def kto_loss(batch: UnpairedBatch, options: KTOOptions, state: dict):
    z0 = torch.zeros((), dtype=batch.logps.dtype, device=batch.logps.device)
    if batch.kl_logps is not None:
        z0 = (batch.kl_logps - batch.ref_kl_logps).mean().detach().clamp(min=0)
    r = batch.log_ratio
    desirable = options.desirable_weight * (1 - torch.sigmoid(options.beta * (r - z0)))
    undesirable = options.undesirable_weight * (1 - torch.sigmoid(options.beta * (z0 - r)))
    per_item = torch.where(batch.desirable, desirable, undesirable)
    loss = per_item.sum() / batch.size
    metrics = batch.reward_metrics(options.beta * r)
    metrics["kl_reference_point"] = float(z0) * len(r) / batch.size
    return loss, metrics
