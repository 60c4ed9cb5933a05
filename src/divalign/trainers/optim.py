"""Optimizer and learning-rate schedule shared by every trainer."""

from __future__ import annotations

import math

import torch

from divalign.errors import UserError

SCHEDULES = ("constant", "linear", "cosine")


def make_optimizer(params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
    """AdamW over ``params``; the fused kernel when this torch build has it for the device."""
    params = list(params)
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


def clip_factor(params: list[torch.Tensor], max_norm: float) -> tuple[float, torch.Tensor | None]:
    """The global L2 norm of the gradients, and the factor that clipping multiplies them by (max_norm / (norm +
    1e-6), as ``torch.nn.utils.clip_grad_norm_``), or None when that factor is capped at exactly 1. Gradients
    sharded by FSDP2 (DTensors) give the norm over all their shards."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0, None
    if hasattr(grads[0], "full_tensor"):
        norm = torch.nn.utils.get_total_norm(grads).full_tensor()
    else:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return float(norm), factor if float(factor) < 1.0 else None


class Optimization:
    """What every trainer does after its backward passes: clip the gradient norm, AdamW step, schedule step — or,
    when the step's loss or gradient norm is not finite, no update at all (the weights, the optimizer state and the
    schedule stay as they were; the gradients are dropped) and the reason in the returned row.

    ``modules``: the model, or a list of modules trained together (a policy and its value head). ``config`` is a
    :class:`divalign.trainers.options.OptimizerOptions` (``max_grad_norm`` 0 disables clipping). ``state_dict``
    also holds torch's global RNG, so that a resumed run continues bit for bit.
    """

    def __init__(self, modules, config, total_steps: int, engine=None):
        self.modules = list(modules) if isinstance(modules, (list, tuple)) else [modules]
        self.params = [p for m in self.modules for p in m.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, config.learning_rate, config.weight_decay)
        self.scheduler = make_schedule(self.optimizer, config.lr_schedule, config.warmup_steps, total_steps)
        self.max_grad_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
        self.scaler = engine.scaler if engine is not None else None
        self.sharded = engine is not None and engine.sharding == "fsdp"

    def step(self, loss: float) -> dict:
        """Update from the accumulated gradients, whose loss (summed over micro-batches) is ``loss``. Returns the
        gradient norm, the learning rate used, and ``skipped_updates`` (1 with a ``skip_reason`` when the update was
        left out).

        With fp16's loss scaling (``scaler``) the gradients are unscaled first; a step whose scaled gradients
        overflowed is left out as torch's GradScaler does, the scale lowered, and counted as ``fp16_overflows``,
        not as a skipped update: it is the scaler finding its range, not a failing run."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm, factor = clip_factor(self.params, self.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm):
            self.scaler.update()  # no step: the overflow lowers the scale
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": grad_norm, "lr": lr, "skipped_updates": 0, "fp16_overflows": 1,
                    "loss_scale": float(self.scaler.get_scale())}
        problem = ("loss" if not math.isfinite(loss) else "gradient norm" if not math.isfinite(grad_norm) else None)
        if problem is not None:
            if self.scaler is not None:
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": grad_norm, "lr": lr, "skipped_updates": 1, "skip_reason": f"non-finite {problem}"}
        if factor is not None and self.optimizer.defaults.get("fused") and self.scaler is None:
            # the fused kernel divides each gradient by grad_scale as it reads it (the hook torch's GradScaler
            # uses), so clipping costs no pass of its own
            self.optimizer.grad_scale = 1.0 / factor
        elif factor is not None:
            torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], factor)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.grad_scale = None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm, "lr": lr, "skipped_updates": 0}

    def state_dict(self) -> dict:
        """Optimizer, schedule, loss scale and torch's RNG; under FSDP2 the optimizer's whole state, gathered from
        the shards (a collective every process joins), so that a run resumes on any number of processes."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optimizer = get_optimizer_state_dict(self.modules[0], self.optimizer,
                                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optimizer = self.optimizer.state_dict()
        state = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state()}
        if self.scaler is not None:
            state["loss_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.modules[0], self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "loss_scaler" in state:
            self.scaler.load_state_dict(state["loss_scaler"])
        torch.set_rng_state(state["torch_rng"])
