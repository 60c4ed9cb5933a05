"""Segment operations over groups of responses that share a prompt (rows tagged with a group id)."""

from __future__ import annotations

import torch
from torch import Tensor


def group_sum(values: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """Sum of ``values`` (B,) within each group; returns (num_groups,)."""
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, group_ids, values)


def group_mean(values: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    counts = group_sum(torch.ones_like(values), group_ids, num_groups)
    return group_sum(values, group_ids, num_groups) / counts.clamp(min=1)


def group_softmax(logits: Tensor, group_ids: Tensor, num_groups: int, member: Tensor) -> Tensor:
    """Softmax of ``logits`` over the members of each group (computed in log space); non-members get 0."""
    z = logits.masked_fill(~member, -torch.inf)
    zmax = torch.full((num_groups,), -torch.inf, dtype=z.dtype, device=z.device)
    zmax = zmax.scatter_reduce(0, group_ids, z, reduce="amax", include_self=True)
    shifted = torch.where(member, z - zmax[group_ids], torch.full_like(z, -torch.inf))
    e = torch.exp(shifted)
    return e / group_sum(e, group_ids, num_groups)[group_ids].clamp(min=torch.finfo(e.dtype).tiny)


def dense_group_ids(group_ids: Tensor) -> tuple[Tensor, int]:
    """Relabel arbitrary group ids as 0..n−1 (in order of first appearance sorted by value)."""
    unique, dense = torch.unique(group_ids, return_inverse=True)
    return dense, int(unique.numel())
