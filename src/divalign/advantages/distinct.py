"""Distinctiveness-masked pairwise advantages, ``distinct`` (DaGRPO; docs/algorithms.md#dagrpo)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.advantages.group import STD_EPS, group_std
from divalign.advantages.registry import Advantages, EstimatorInputs, register


@dataclass
class DistinctOptions:
    """Options of the distinctiveness-masked estimator (an objective using it inherits them)."""

    threshold: float = 0.1
    """Pairs whose fine-grained scores differ by less than this are masked."""
    score: str = "partial"
    """Fine-grained score: a reward spec (partial: partial credit; rm:FOLDER; ...) scoring each response."""

    def __post_init__(self):
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0 (got {self.threshold})")


def distinct_pairs(rewards: Tensor, scores: Tensor, group_ids: Tensor, num_groups: int, threshold: float,
                   scale: bool = True) -> Tensor:
    """DaGRPO-style advantages (arXiv 2512.06337, rebuilt).

    The group-relative advantage is a mean of pairwise differences, r_i − mean(r) = (1/G)·Σ_j (r_i − r_j). Here a
    pair (i, j) of the same group only counts when its fine-grained scores differ by at least ``threshold``
    (|s_i − s_j| ≥ τ): a_i = Σ_j m_ij (r_i − r_j) / Σ_j m_ij, divided by the group's reward standard deviation
    when ``scale``. A response with no distinct partner gets 0.
    """
    same_group = group_ids[:, None] == group_ids[None, :]
    distinct = same_group & ((scores[:, None] - scores[None, :]).abs() >= threshold)
    diffs = (rewards[:, None] - rewards[None, :]) * distinct
    counts = distinct.sum(-1)
    adv = torch.where(counts > 0, diffs.sum(-1) / counts.clamp(min=1), torch.zeros_like(rewards))
    if not scale:
        return adv
    return adv / (group_std(rewards, group_ids, num_groups) + STD_EPS)


@register("distinct", options=DistinctOptions, needs_scores=True, min_group_size=2)
def distinct(inputs: EstimatorInputs, options: DistinctOptions) -> Advantages:
    """Distinctiveness-masked pairs (DaGRPO)."""
    return Advantages(distinct_pairs(inputs.sequence_rewards(), inputs.scores, inputs.group_ids, inputs.num_groups,
                                     options.threshold))
