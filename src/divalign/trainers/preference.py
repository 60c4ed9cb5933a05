"""Offline preference and divergence-estimation training on pairs (DPO, IPO, f-DPO, f-PO) or on unpaired
desirable/undesirable responses (FDO with its KLDO/BCO/HDO presets, KTO).

One step: take the step's pairs (or examples) in a seeded order, run the policy once over all their completions
(a pair's prompt runs once for both, see ``models.completion_forward``), sum token log-probabilities per
completion, take the reference log-probabilities (computed once for the whole dataset before training, or live
in the policy's pass), apply the objective, backward, clip, step. Unpaired objectives keep a small running state
(KLDO's average, BCO's shift) that is saved with each checkpoint. Each step's row also gives the seconds spent in
the forward and backward (a live reference included) and in the optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from divalign.data.encoding import Encoded, encode_dataset
from divalign.data.order import EpochOrder
from divalign.data.preferences import Pair, Unpaired
from divalign.models import configure, set_training
from divalign.objectives import PairBatch, UnpairedBatch
from divalign.parallel import World, gather_with_grad
from divalign.trainers.engine import Engine
from divalign.trainers.loop import Clock
from divalign.trainers.optim import Optimization
from divalign.trainers.options import (
    AdapterOptions,
    BatchOptions,
    CompileOptions,
    ModelOptions,
    ObjectiveChoice,
    OptimizerOptions,
    PairDataOptions,
    RunOptions,
    TrainingDeviceOptions,
)
from divalign.trainers.scoring import batch_logps, policy_and_reference_logps, reference_logps


@dataclass
class PreferenceConfig(ObjectiveChoice, ModelOptions, AdapterOptions, PairDataOptions, BatchOptions, CompileOptions,
                       TrainingDeviceOptions, OptimizerOptions, RunOptions):
    """Offline alignment on preference pairs (dpo, ipo, fdpo, fpo) or desirable/undesirable data (fdo, kto); the
    model is also the frozen reference."""

    output_dir: str = "runs/preference"
    objective: str = "dpo"
    completion_field: str = "completion"
    """Field holding the response (unpaired files)."""
    label_field: str = "label"
    """Field holding desirable (true/1) or undesirable (false/0) (unpaired files)."""
    precompute_reference: bool = True
    """Compute the reference log-probabilities once before training instead of a reference forward per step."""
    learning_rate: float = 5e-6

    families = ("pairs", "unpaired")


class PreferenceTrainer:
    def __init__(
        self,
        model,
        tokenizer,
        config: PreferenceConfig,
        train: list[Pair] | list[Unpaired],
        reference,
        eval_items: list[Pair] | list[Unpaired] | None = None,
        world: World | None = None,
    ):
        self.policy, self.tokenizer, self.config = model, tokenizer, config
        self.engine = Engine([model], world or World(), config, frozen=(reference,))
        for m in (model, reference):
            configure(m, fast_path=config.fast_path, compile=config.compile, dtype=self.engine.dtype,
                      gradient_checkpointing=config.gradient_checkpointing and m is model)
        self.objective, self.options = config.chosen, config.objective_options
        self.paired = self.objective.family == "pairs"
        self.data = encode_dataset(tokenizer, train, config.max_length, self.paired)
        self.labels = None if self.paired else torch.tensor([u.desirable for u in train], device=self.engine.device)
        self.units = len(train)  # pairs or examples
        self.order = EpochOrder(self.units, f"preference-{config.seed}")
        self.reference = reference
        self.ref_logps = None
        if config.precompute_reference:
            with self.engine.autocast():
                self.ref_logps = reference_logps(reference, self.data, tokenizer.pad_token_id,
                                                 device=self.engine.device)
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * self.units / config.batch_size))
        self.optimization = Optimization(model, config, self.total_steps, self.engine)
        self.state: dict = {}
        self.eval_items = eval_items

    def state_dict(self, step: int) -> dict:
        return {"step": step, **self.optimization.state_dict(), "objective_state": self.state}

    def load_state_dict(self, state: dict) -> int:
        self.optimization.load_state_dict(state)
        self.state = state.get("objective_state", {})
        return int(state["step"])

    def _units(self, step: int) -> list[int]:
        """Indices of the pairs/examples of ``step``: consecutive items of seeded epoch permutations."""
        return self.order.take(step * self.config.batch_size, self.config.batch_size)

    def _rows(self, units: list[int]) -> list[int]:
        g = self.data.group
        return [u * g + j for u in units for j in range(g)]

    def step(self, step: int) -> dict:
        """One optimizer step over the step's pairs (or examples): this process's share, in micro-batches, each
        loss a share of the whole batch's (the counts are the whole batch's)."""
        clock, cfg = Clock(), self.config
        set_training(self.policy, True)
        units = self._units(step)
        share = self.engine.world.share(len(units))
        micro = cfg.micro_batch_size or max(len(share), 1)
        counts = self._counts(units)
        if not self.paired and self.options.mismatched_pairs and len(units) > 1:
            counts.update(self._mismatched_logps(units))
        passes = [self._pass(units, range(start, min(start + micro, share.stop)), counts)
                  for start in range(share.start, share.stop, micro)]
        with clock("forward_backward_s"):  # a live reference's forward runs in the policy's pass
            sums = self.engine.accumulate(passes, filler=self._pass(units, range(1), counts))
        with clock("optimizer_s"):
            update = self.optimization.step(sums["loss"])
        if not self.paired and not update["skipped_updates"]:
            self.state = self.options.next_state(self.state, sums)
        row = {"step": step + 1, "loss": sums.pop("loss"), **update, **sums, **clock.seconds}
        if self.eval_items and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == self.total_steps):
            row.update(self.evaluate(self.eval_items))
        row["step_s"] = clock.elapsed()
        return row

    def _pass(self, units: list[int], positions: range, counts: dict):
        """The pass of the step's units at ``positions``: forward (the reference's in the same pass unless
        precomputed) and the objective; returns the loss and the micro-batch's shares of the metrics.

        An objective that needs the whole batch in one pass (``whole_batch_only``), run on several processes,
        gathers every process's log-probabilities with their gradient (:func:`divalign.parallel.gather_with_grad`)
        and computes the whole batch's loss on each; the gather's backward sums the processes' gradients of that
        one loss, so each process counts its copy 1/size (docs/architecture.md#several-processes)."""
        part = [units[i] for i in positions]
        world = self.engine.world
        whole = not self.paired and self.options.whole_batch_only and world.size > 1

        def run():
            rows = self._rows(part)
            batch = self.data.batch(rows, self.tokenizer.pad_token_id).to(self.engine.device)
            if self.ref_logps is None:
                logps, lengths, ref = policy_and_reference_logps(self.policy, self.reference, batch, self.data.group)
            else:
                logps, lengths = batch_logps(self.policy, batch, self.data.group)
                ref = self.ref_logps[rows]
            if not whole:
                loss, metrics = self._loss(part, logps, lengths, ref, counts)
                return loss, {"loss": float(loss.item()), **metrics}
            logps, lengths = gather_with_grad(logps, world), gather_with_grad(lengths, world)
            ref = gather_with_grad(ref.detach(), world)
            loss, metrics = self._loss(units, logps, lengths, ref, counts)
            share = {key: value / world.size for key, value in metrics.items()}
            return loss / world.size, {"loss": float(loss.item()) / world.size, **share}
        return run

    @torch.no_grad()
    def evaluate(self, items: list[Pair] | list[Unpaired]) -> dict:
        """Held-out implicit-reward statistics with Δ = log π_θ − log π_ref summed over each response.

        Pairs: ``eval_accuracy`` (share of pairs with Δ_chosen > Δ_rejected) and the mean margin. Unpaired: the
        mean Δ of desirable and of undesirable responses and their gap.
        """
        pad, device = self.tokenizer.pad_token_id, self.engine.device
        data = encode_dataset(self.tokenizer, items, self.config.max_length, self.paired)
        with self.engine.autocast():
            delta = (reference_logps(self.policy, data, pad, device=device)
                     - reference_logps(self.reference, data, pad, device=device))
        if self.paired:
            margin = delta[0::2] - delta[1::2]
            return {"eval_accuracy": float((margin > 0).float().mean()), "eval_margin": float(margin.mean())}
        labels = torch.tensor([u.desirable for u in items], device=device)
        good, bad = float(delta[labels].mean()), float(delta[~labels].mean())
        return {"eval_delta_desirable": good, "eval_delta_undesirable": bad, "eval_gap": good - bad}

    def _counts(self, units: list[int]) -> dict:
        if self.paired:
            return {"num_pairs": len(units)}
        labels = self.labels[units]
        return {"num_desirable": int(labels.sum()), "num_undesirable": int((~labels).sum())}

    def _loss(self, units, logps, lengths, ref, counts):
        if self.paired:
            batch = PairBatch(logps[0::2], logps[1::2], ref[0::2], ref[1::2], lengths[0::2], lengths[1::2], **counts)
            return self.objective.loss(batch, self.options)
        batch = UnpairedBatch(logps, ref, self.labels[units], **counts)
        return self.objective.loss(batch, self.options, self.state)

    def _mismatched_logps(self, units: list[int]) -> dict:
        """Log-probabilities of mismatched pairs for the whole step (KTO's z₀): each prompt with the *next*
        example's response, under the policy and the reference, without gradient."""
        shifted = Encoded(
            [self.data.prompts[u] for u in units], [self.data.responses[u] for u in units[1:] + units[:1]], 1
        )
        batch = shifted.batch(list(range(len(units))), self.tokenizer.pad_token_id).to(self.engine.device)
        with torch.no_grad(), self.engine.autocast():
            kl_logps = batch_logps(self.policy, batch, 1)[0]
            ref_kl = batch_logps(self.reference, batch, 1)[0]
        return {"kl_logps": kl_logps, "ref_kl_logps": ref_kl}
