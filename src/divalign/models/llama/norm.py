"""LlamaRMSNorm, y = x / √(mean(x²) + ε) · gain: the forward every path runs, and the pieces of the passes with a
written-out backward.

:func:`rms_norm` is torch's fused kernel, used under autograd and without gradient (scoring, decoding; a gain of
None leaves it to be folded into the next product). The written-out training pass needs the inverse RMS r of
each row for its backward, which the fused kernel does not return: :func:`normalize` computes (x̂, r) and
:func:`backward` the gradients. Both compute the same x̂ (the tests compare them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_norm(x: Tensor, gain: Tensor | None, eps: float) -> Tensor:
    """x̂·gain over the last axis (gain None: x̂ alone)."""
    return F.rms_norm(x, (x.shape[-1],), gain, eps)


def normalize(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x̂, r) with x̂ = x·r, r = 1/√(mean(x²) + ε) per row (LlamaRMSNorm before its gain). The sum of squares
    is one ``vecdot`` pass; the rest works on one number per row."""
    r = torch.linalg.vecdot(x, x).unsqueeze(-1).div_(x.shape[-1]).add_(eps).rsqrt_()
    return x * r, r


def backward(d_out: Tensor, gain: Tensor, normed: Tensor, r: Tensor, residual: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
    """Gradients of y = x̂·gain given d_out = ∂L/∂y: ∂L/∂x = r·(t − x̂·mean(t·x̂)) with t = d_out·gain (plus
    ``residual``, the gradient reaching x by another path), and ∂L/∂gain = Σ_rows d_out·x̂."""
    t = d_out * gain
    dot = torch.linalg.vecdot(t, normed).unsqueeze(-1).mul_(-1 / normed.shape[-1])
    d_x = torch.addcmul(t, normed, dot)
    d_x = d_x.mul_(r) if residual is None else torch.addcmul(residual, d_x, r)
    return d_x, (d_out * normed).sum(0)
