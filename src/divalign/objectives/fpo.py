"""f-PO (Han et al., arXiv 2410.21662; docs/algorithms.md#f-po), pairwise, as the authors' ``fpo_loss`` in its
"pref" setting.

With q = softmax(β·(Δ_w, Δ_l)) over the pair and the target p = softmax(0, −10) (the code's log p = (0, −10),
normalised here, a change of 5·10⁻⁵ in p), minimise D(q, p):

* ``alpha``: Σ p·(u^(1−α) − (1 − α)u − α)/(α(α − 1)) with u = q/p (α → 1: a DPO-like KL(p‖q));
* ``js``: ½KL(q‖m) + ½KL(p‖m), m = (q + p)/2 (equal to the code's expanded form);
* ``hellinger``: Σ(√q − √p)²;
* ``jeffreys``: Σ(q − p)(log q − log p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.objectives.batch import PairBatch
from divalign.objectives.dpo import check_beta
from divalign.objectives.registry import register

DIVERGENCES = ("alpha", "js", "hellinger", "jeffreys")
#: log p of the pairwise target before normalisation (the authors' code).
TARGET_LOGITS = (0.0, -10.0)


@dataclass
class FPOOptions:
    """Options of ``fpo``."""

    divergence: str = "alpha"
    """D(q, p) between the model's and the target pair distributions: alpha, js, hellinger or jeffreys."""
    alpha: float = 0.5
    """alpha of the alpha-divergence (alpha -> 1: DPO-like, alpha -> 0: EXO-like)."""
    beta: float = 0.1
    """Temperature of q = softmax(beta * (Delta_w, Delta_l))."""

    def __post_init__(self):
        check_beta(self.beta, "fpo")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"fpo.divergence: expected one of {', '.join(DIVERGENCES)} (got '{self.divergence}')")
        if self.divergence == "alpha" and self.alpha in (0.0, 1.0):
            raise ValueError("fpo.alpha must not be 0 or 1")


def fpo_divergence(log_q: Tensor, log_p: Tensor, name: str, alpha: float) -> Tensor:
    """D(q, p) summed over the last dimension (candidates), from log-probabilities."""
    q, p = log_q.exp(), log_p.exp()
    if name == "alpha":
        u = q / p
        return (p * (u ** (1 - alpha) - (1 - alpha) * u - alpha)).sum(-1) / (alpha * (alpha - 1))
    if name == "js":
        log_m = torch.logsumexp(torch.stack([log_q, log_p]), dim=0) - math.log(2.0)
        return 0.5 * (q * (log_q - log_m)).sum(-1) + 0.5 * (p * (log_p - log_m)).sum(-1)
    if name == "hellinger":
        return ((q.sqrt() - p.sqrt()) ** 2).sum(-1)
    return ((q - p) * (log_q - log_p)).sum(-1)  # jeffreys


@register("fpo", family="pairs", options=FPOOptions)
def fpo_loss(batch: PairBatch, options: FPOOptions):
    scores = options.beta * torch.stack([batch.chosen_ratio, batch.rejected_ratio], dim=-1)
    log_q = torch.log_softmax(scores, dim=-1)
    log_p = torch.log_softmax(torch.tensor(TARGET_LOGITS, dtype=scores.dtype, device=scores.device), -1)
    per_pair = fpo_divergence(log_q, log_p.expand_as(log_q), options.divergence, options.alpha)
    margin = scores[..., 0] - scores[..., 1]
    return batch.mean(per_pair), batch.metrics(options.beta, margin)
