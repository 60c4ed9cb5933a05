"""RMSNorm without its gain, and its gradient, for the passes with a written-out backward."""

from __future__ import annotations

import torch
from torch import Tensor


def normalize(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x̂, r) with x̂ = x·r, r = 1/√(mean(x²) + ε) per row (LlamaRMSNorm before its gain)."""
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x * r, r


def normalize_backward(g: Tensor, normed: Tensor, r: Tensor) -> Tensor:
    """Gradient of x̂(x) given the output gradient ``g``: r·(g − x̂·mean(g·x̂))."""
    return (g - normed * (g * normed).mean(-1, keepdim=True)) * r
