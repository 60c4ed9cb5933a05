"""Optimizer and learning-rate schedule shared by every trainer."""

from __future__ import annotations

import math

import torch

from divalign.errors import UserError

SCHEDULES = ("constant", "linear", "cosine")


def make_optimizer(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
    """AdamW over trainable parameters; the fused kernel when this torch build has it for the device."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


def make_schedule(optimizer, kind: str, warmup_steps: int, total_steps: int):
    """Linear warm-up, then constant, linear decay to 0, or cosine decay to 0."""
    if kind not in SCHEDULES:
        raise UserError(f"lr_schedule: expected one of {', '.join(SCHEDULES)} (got '{kind}')")

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
