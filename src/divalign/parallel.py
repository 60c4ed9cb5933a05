"""The processes and the device a command runs on: one process, or several started by ``torchrun`` and joined
through torch.distributed (gloo between CPU processes, NCCL between GPUs), each on one device, computing in one
precision.

A run started by torchrun (its ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables) joins the other processes
in :func:`start`; a run started plainly is a world of one, and nothing here then calls torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun): known before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def launched_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class World:
    """The processes of a run and this one's place and device among them."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files and prints its progress."""
        return self.rank == 0

    def share(self, n: int) -> range:
        """This process's contiguous share of ``n`` items in order: the first ``n % size`` processes take one more
        (so the shares, in rank order, are the items in order)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes (the same tensor back in a world of one)."""
        if self.size == 1:
            return values
        out = values.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(values.device)

    def max(self, value: int) -> int:
        if self.size == 1:
            return value
        out = torch.tensor([value], device=self.device)
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return int(out)

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order (pickled between the run's own processes)."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    """The device of ``--device``: ``auto`` is CUDA when this torch sees a GPU, else the CPU; each process of a
    multi-GPU run takes the GPU of its local rank."""
    if option not in DEVICES:
        raise ValueError(f"device: expected one of {', '.join(DEVICES)} (got '{option}')")
    if option == "cuda" or (option == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for, but this torch sees no GPU")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def process_device(option: str) -> torch.device:
    """The device of ``--device`` for this process (its local rank's GPU under torchrun)."""
    return resolve_device(option, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_dtype(option: str, device: torch.device) -> torch.dtype:
    """The compute precision of ``--dtype``: ``auto`` is bf16 on a GPU that supports it, else fp32."""
    if option == "auto":
        on_bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_bf16_gpu else torch.float32
    if option not in DTYPES:
        raise ValueError(f"dtype: expected one of auto, {', '.join(DTYPES)} (got '{option}')")
    return DTYPES[option]


def start(device_option: str = "auto") -> World:
    """The world of this run: join the processes torchrun started (gloo on CPU, NCCL on CUDA) and pick this
    process's device."""
    size, rank = launched_size(), launched_rank()
    device = process_device(device_option)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    return World(rank, size, device)


def finish(together: bool = True) -> None:
    """Leave the process group (if this process joined one). ``together``: first wait until every process is
    done (gloo aborts a process that tears its group down while a peer still works, e.g. while the main process
    writes the last files); a failing process leaves without waiting for peers that may never come."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def autocast(device: torch.device, dtype: torch.dtype):
    """The forward passes' precision: fp32 runs as it is; bf16 and fp16 compute under ``torch.autocast`` while
    the weights (and the optimizer's state) stay fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class _GatherRows(torch.autograd.Function):
    """All processes' rows, joined in rank order; the backward adds up every process's gradient of the joined rows
    and hands each its own rows' share."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: tuple[int, ...], rank: int):
        ctx.sizes, ctx.rank = sizes, rank
        width = max(sizes)
        padded = torch.nn.functional.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, width - tensor.shape[0]))
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Every process's ``tensor`` (first dimensions may differ) joined in rank order, differentiable: the gradient
    each process gets for its rows is the sum over the processes of the gradients of the joined rows."""
    if world.size == 1:
        return tensor
    sizes = tuple(int(n) for n in world.gather(int(tensor.shape[0])))
    return _GatherRows.apply(tensor, sizes, world.rank)
