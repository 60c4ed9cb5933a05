"""How a trainer's passes run: on the world's device (:mod:`divalign.parallel`), in the run's precision, and, with
several processes, with the trained modules' gradients kept equal by DDP or their parameters sharded by FSDP2.

A trainer hands the engine the passes of one optimizer step (:meth:`Engine.accumulate`), each a function that
runs a forward and returns ``(loss, metrics)`` for its share of the step's batch; every loss is already divided by
the whole step's normaliser (tokens, sequences, pairs of the global batch), so that the shares add up to the
step's loss whatever the split. The engine runs each pass (inside DDP's forward, or with FSDP2's gradient
synchronisation only on the last), backs it up, and returns the metrics summed over the passes of every process.

Data parallelism averages gradients over the processes; each loss is multiplied by the number of processes to
undo that, so the gradient is the sum of the shares (docs/architecture.md#several-processes). A process that has
fewer passes than another runs a zero-weight pass on ``filler`` for each missing one: every process takes part in
every gradient synchronisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from divalign.parallel import World, autocast, resolve_dtype

SHARDINGS = ("ddp", "fsdp")

Pass = Callable[[], tuple[torch.Tensor, dict]]


class _Passes(nn.Module):
    """The trained modules as one module whose forward runs a given pass: DDP wraps it, so every pass (whatever
    kernels it calls on the modules' parameters) runs inside DDP's forward."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.trained = nn.ModuleList(modules)

    def forward(self, run: Pass):
        return run()


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP2 shards one by one (``model.model.layers`` of Hugging Face decoders)."""
    inner = getattr(model, "base_model", model)
    for path in ("model.model.layers", "model.layers", "transformer.h"):
        node = inner
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return list(node)
    return []


class Engine:
    """The device, precision and process group of a trainer's modules (see the module's docstring).

    ``trained``: the modules the optimizer updates (a policy, and a value head); ``frozen``: modules only run
    forward (a reference), placed (and with FSDP2 sharded) the same way.
    """

    def __init__(self, trained: list[nn.Module], world: World, options, frozen: tuple[nn.Module, ...] = ()):
        self.world = world
        self.device = world.device
        self.dtype = resolve_dtype(options.dtype, world.device)
        self.sharding = options.sharding if world.size > 1 else None
        # a reference that owns no parameters (a LoRA model's base with the adapter off) needs no placing
        self.trained, self.frozen = list(trained), tuple(m for m in frozen if next(m.parameters(), None) is not None)
        for module in [*self.trained, *self.frozen]:
            module.to(self.device)
        if options.gradient_checkpointing:
            for module in self.trained:
                # recent transformers call the switch activation_checkpointing_enable and deprecate the older name
                enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
                    module, "gradient_checkpointing_enable", None)
                if enable is not None:
                    enable()
        self._ddp = None
        if self.sharding == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (world.size,))
            for module in [*self.trained, *self.frozen]:
                for layer in _decoder_layers(module):
                    fully_shard(layer, mesh=mesh)
                fully_shard(module, mesh=mesh)
        elif self.sharding == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(_Passes(self.trained), device_ids=ids)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def autocast(self):
        """The context every forward of this trainer runs in (the precision's ``torch.autocast``)."""
        return autocast(self.device, self.dtype)

    @contextlib.contextmanager
    def generating(self, dtype: torch.dtype | None = None):
        """The context of sampling: the run's precision (or ``dtype``) and, under FSDP2, every module's whole
        parameters gathered for the duration (processes decode different numbers of tokens, so no forward may need
        the others)."""
        modules = [m for top in self.trained for m in top.modules() if hasattr(m, "unshard")]
        modules = modules if self.sharding == "fsdp" else []
        for module in modules:
            module.unshard()
            module.set_reshard_after_forward(False, recurse=False)
        try:
            with autocast(self.device, dtype or self.dtype), torch.no_grad():
                yield
        finally:
            for module in modules:
                module.reshard()
                module.set_reshard_after_forward(True, recurse=False)

    def accumulate(self, passes: list[Pass], filler: Pass | None = None) -> dict:
        """Run and back up one optimizer step's passes (see the module's docstring); the metrics summed over the
        passes of every process."""
        rounds = self.world.max(len(passes))
        sums: dict = {}
        for i in range(rounds):
            real = i < len(passes)
            if not real and filler is None:
                raise ValueError("a process has fewer passes than another and no filler pass")
            metrics = self._run(passes[i] if real else filler, sync=i == rounds - 1, weight=1.0 if real else 0.0)
            if real:
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
        if self.world.size > 1:
            gathered = self.world.gather(sums)
            keys = dict.fromkeys(key for part in gathered for key in part)
            sums = {key: sum(part.get(key, 0.0) for part in gathered) for key in keys}
        return sums

    def _run(self, run: Pass, sync: bool, weight: float):
        no_sync = contextlib.nullcontext()
        if self._ddp is not None and not sync:
            no_sync = self._ddp.no_sync()
        elif self.sharding == "fsdp":
            for module in self.trained:
                module.set_requires_gradient_sync(sync)
        with no_sync:
            with self.autocast():
                loss, metrics = self._ddp(run) if self._ddp is not None else run()
            scale = weight * self.world.size  # undoes data parallelism's average over the processes
            if scale != 1.0:
                loss = loss * scale
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return metrics

    def evaluation_share(self, n: int) -> range:
        """The items of an evaluation over ``n`` this process runs: its share, or all of them under FSDP2, whose
        forwards every process must run together (:meth:`evaluation_total` adds up the shares)."""
        return range(n) if self.sharding == "fsdp" else self.world.share(n)

    def evaluation_total(self, totals: torch.Tensor) -> torch.Tensor:
        """Totals over :meth:`evaluation_share` added up over the processes."""
        return totals if self.sharding == "fsdp" else self.world.sum(totals)

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """The processes' tensors concatenated along the first dimension, in rank order (each process's rows are
        its share of a batch)."""
        if self.world.size == 1:
            return tensor
        parts = self.world.gather(tensor.detach().cpu())
        return torch.cat(parts).to(tensor.device)

    def full_state_dict(self, model: nn.Module) -> dict | None:
        """The whole model's state dict (gathered from the shards under FSDP2, a collective every process joins);
        None on processes that do not write it."""
        if self.sharding == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return state if self.world.main else None
        return model.state_dict() if self.world.main else None


def weights_finite(model: nn.Module, world: World | None = None) -> bool:
    """Whether every parameter of ``model`` is finite (on every process of ``world``, over every shard)."""
    local = [p.detach() for p in model.parameters()]
    local = [p.to_local() if hasattr(p, "to_local") else p for p in local]
    bad = torch.tensor([0.0 if bool(torch.isfinite(torch.stack(torch._foreach_norm(local))).all()) else 1.0])
    return float((world or World()).sum(bad)) == 0.0
