"""Positions and attention masks of padded and packed rows, shared by every forward path."""

from __future__ import annotations

import torch
from torch import Tensor


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding: the first real token of every row is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_mask(mask: Tensor) -> Tensor:
    """(rows, L) padding mask → (rows, L, L): causal, real keys only, and every position sees itself (so no row of
    a softmax is empty, padded ones included)."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return (causal & mask.bool()[:, None, :]) | torch.eye(length, dtype=torch.bool, device=mask.device)


def segment_positions(segment_ids: Tensor) -> Tensor:
    """Position of every token within its segment (segments are runs of equal ids along each row)."""
    index = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values


def segment_mask(segment_ids: Tensor) -> Tensor:
    """(rows, L) segment ids (0 = padding) → (rows, L, L): causal within each segment, never across segments;
    padding positions see themselves only."""
    length = segment_ids.shape[1]
    causal = torch.ones((length, length), dtype=torch.bool, device=segment_ids.device).tril()
    real = segment_ids != 0
    allowed = causal & (segment_ids[:, :, None] == segment_ids[:, None, :]) & real[:, None, :]
    return allowed | torch.eye(length, dtype=torch.bool, device=segment_ids.device)
