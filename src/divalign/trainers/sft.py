"""Supervised fine-tuning: next-token loss on completion tokens only, optionally packing several examples per row.

Examples are tokenised once: prompt tokens (the tokenizer's special tokens included, or the chat template's)
then completion tokens and the end-of-sequence token. Every epoch shuffles them with a seeded permutation; with
``packing`` consecutive examples share a row of ``max_length`` tokens, attention never crossing from one to the
next (:func:`divalign.models.segment_logprobs`). The loss is the mean negative log-likelihood over the batch's
completion tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from divalign.data.chat import Rendered
from divalign.data.encoding import prompt_ids, response_ids
from divalign.data.order import EpochOrder
from divalign.data.tokens import fit
from divalign.models import configure, segment_logprobs, set_training
from divalign.parallel import World
from divalign.tracking import warn
from divalign.trainers.engine import Engine
from divalign.trainers.loop import Clock
from divalign.trainers.optim import Optimization
from divalign.trainers.options import (
    AdapterOptions,
    BatchOptions,
    DataOptions,
    ForwardOptions,
    ModelOptions,
    OptimizerOptions,
    RunOptions,
    TrainingDeviceOptions,
)


@dataclass
class SFTConfig(ModelOptions, AdapterOptions, DataOptions, BatchOptions, ForwardOptions, TrainingDeviceOptions,
                OptimizerOptions, RunOptions):
    """Supervised fine-tuning on prompt-completion data, plain text or conversations; the loss covers completion
    tokens only (the held-out data's loss and perplexity are logged)."""

    output_dir: str = "runs/sft"
    completion_field: str = "completion"
    """Field holding the completion."""
    messages_field: str = "messages"
    """Field holding a conversation whose last message, the assistant's reply, is learnt (used when the records
    have it)."""
    text_field: str = "text"
    """Field holding plain text to learn whole (used when the records have it and no prompt field)."""
    packing: bool = False
    """Pack several examples into each row of max_length tokens."""
    max_length: int = 512
    learning_rate: float = 2e-5
    lr_schedule: str = "cosine"


@dataclass
class Tokenized:
    ids: list[int]
    completion_start: int  #: tokens before this index are prompt (no loss)


def tokenize(tokenizer, items: list[Rendered], max_length: int) -> list[Tokenized]:
    """Prompt + completion + end-of-sequence token ids, cut to ``max_length`` by :func:`divalign.data.tokens.fit`."""
    out, cut = [], 0
    for item in items:
        prompt = prompt_ids(tokenizer, item.prompt, item.templated)
        completion = response_ids(tokenizer, item.completion, item.templated)
        fitted_prompt, fitted_completion = fit(prompt, completion, max_length)
        cut += len(fitted_prompt) + len(fitted_completion) < len(prompt) + len(completion)
        out.append(Tokenized(fitted_prompt + fitted_completion, len(fitted_prompt)))
    if cut:
        warn(f"{cut} of {len(items)} examples cut to max_length {max_length}")
    return out


@dataclass
class Rows:
    input_ids: torch.Tensor  #: (R, L)
    segment_ids: torch.Tensor  #: (R, L), 0 = padding
    loss_mask: torch.Tensor  #: (R, L − 1): 1 where the target token is a completion token

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(self.input_ids[start:stop], self.segment_ids[start:stop], self.loss_mask[start:stop])

    def to(self, device) -> Rows:
        return Rows(self.input_ids.to(device), self.segment_ids.to(device), self.loss_mask.to(device))


def build_rows(examples: list[Tokenized], pad_id: int, max_length: int, packing: bool) -> Rows:
    """One example per row, or first-fit packing in the given order."""
    rows: list[list[Tokenized]] = []
    for ex in examples:
        if packing and rows and sum(len(e.ids) for e in rows[-1]) + len(ex.ids) <= max_length:
            rows[-1].append(ex)
        else:
            rows.append([ex])
    width = max(sum(len(e.ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.float)
    for r, row in enumerate(rows):
        at = 0
        for s, ex in enumerate(row, start=1):
            n = len(ex.ids)
            ids[r, at : at + n] = torch.tensor(ex.ids)
            segments[r, at : at + n] = s
            targets[r, at + ex.completion_start : at + n] = 1.0
            at += n
    return Rows(ids, segments, targets[:, 1:])


def sft_loss_terms(model, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of completion-token NLL, number of completion tokens) of some rows."""
    logp = segment_logprobs(model, rows.input_ids, rows.segment_ids)
    return -(logp * rows.loss_mask).sum(), rows.loss_mask.sum()


class SFTTrainer:
    """Optimizer steps over seeded epochs of (optionally packed) rows; ``step`` is a pure function of the step."""

    def __init__(
        self,
        model,
        tokenizer,
        items: list[Rendered],
        config: SFTConfig,
        eval_items: list[Rendered] | None = None,
        world: World | None = None,
    ):
        self.policy, self.tokenizer, self.config = model, tokenizer, config
        self.engine = Engine([model], world or World(), config)
        configure(model, fast_path=config.fast_path, dtype=self.engine.dtype,
                  gradient_checkpointing=config.gradient_checkpointing)
        self.examples = tokenize(tokenizer, items, config.max_length)
        self.order = EpochOrder(len(self.examples), f"sft-{config.seed}")
        self._epoch_rows: dict[int, Rows] = {}
        self._row_counts: dict[int, int] = {}
        self.eval_examples = tokenize(tokenizer, eval_items, config.max_length) if eval_items else None
        self.total_steps = config.steps or max(
            1, math.ceil(config.epochs * self._rows_per_epoch(0) / config.batch_size)
        )
        self.optimization = Optimization(model, config, self.total_steps, self.engine)

    def _rows(self, epoch: int) -> Rows:
        """The rows of one epoch (the latest one built is kept; row counts of all built epochs are kept)."""
        if epoch not in self._epoch_rows:
            order = self.order.permutation(epoch)
            self._epoch_rows = {
                epoch: build_rows(
                    [self.examples[i] for i in order],
                    self.tokenizer.pad_token_id,
                    self.config.max_length,
                    self.config.packing,
                )
            }
            self._row_counts[epoch] = self._epoch_rows[epoch].input_ids.shape[0]
        return self._epoch_rows[epoch]

    def _rows_per_epoch(self, epoch: int) -> int:
        if epoch not in self._row_counts:
            self._rows(epoch)
        return self._row_counts[epoch]

    def _batch(self, step: int) -> Rows:
        """Rows of ``step``: consecutive rows of the seeded epochs, wrapping into the next epoch."""
        picked, need, k = [], self.config.batch_size, step * self.config.batch_size
        while need:
            epoch, index = 0, k
            while index >= self._rows_per_epoch(epoch):
                index -= self._rows_per_epoch(epoch)
                epoch += 1
            rows = self._rows(epoch)
            take = min(need, rows.input_ids.shape[0] - index)
            picked.append(rows.slice(index, index + take))
            need, k = need - take, k + take
        width = max(p.input_ids.shape[1] for p in picked)
        pad_id = self.tokenizer.pad_token_id

        pad = torch.nn.functional.pad
        return Rows(
            torch.cat([pad(p.input_ids, (0, width - p.input_ids.shape[1]), value=pad_id) for p in picked]),
            torch.cat([pad(p.segment_ids, (0, width - p.segment_ids.shape[1])) for p in picked]),
            torch.cat([pad(p.loss_mask, (0, width - 1 - p.loss_mask.shape[1])) for p in picked]),
        )

    def state_dict(self, step: int) -> dict:
        return {"step": step, **self.optimization.state_dict()}

    def load_state_dict(self, state: dict) -> int:
        self.optimization.load_state_dict(state)
        return int(state["step"])

    def step(self, step: int) -> dict:
        """One optimizer step over the step's rows: this process's share of them, in micro-batches, each loss
        divided by the completion tokens of all the rows (so the shares add up whatever the split)."""
        clock, cfg = Clock(), self.config
        set_training(self.policy, True)
        batch = self._batch(step).to(self.engine.device)
        tokens = batch.loss_mask.sum().clamp(min=1)
        share = self.engine.world.share(batch.input_ids.shape[0])
        micro = cfg.micro_batch_size or max(len(share), 1)

        def loss_of(rows: Rows):
            def run():
                nll, _ = sft_loss_terms(self.policy, rows)
                loss = nll / tokens
                return loss, {"loss": float(loss.item())}
            return run

        passes = [loss_of(batch.slice(start, min(start + micro, share.stop)))
                  for start in range(share.start, share.stop, micro)]
        sums = self.engine.accumulate(passes, filler=loss_of(batch.slice(0, 1)))
        row = {"step": step + 1, "loss": sums["loss"], "tokens": int(tokens.item()),
               **self.optimization.step(sums["loss"])}
        if self.eval_examples and (
            (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == self.total_steps
        ):
            row.update(self.evaluate())
        row["step_s"] = clock.elapsed()
        return row

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean completion-token NLL and perplexity on the held-out examples (each process scores its share)."""
        was_training = self.policy.training
        self.policy.eval()
        rows = build_rows(self.eval_examples, self.tokenizer.pad_token_id, self.config.max_length, packing=False)
        rows = rows.to(self.engine.device)
        share = self.engine.evaluation_share(rows.input_ids.shape[0])
        totals = torch.zeros(2, dtype=torch.float64)
        with self.engine.autocast():
            for start in range(share.start, share.stop, 64):
                nll, count = sft_loss_terms(self.policy, rows.slice(start, min(start + 64, share.stop)))
                totals += torch.tensor([float(nll), float(count)], dtype=torch.float64)
        nll, count = self.engine.evaluation_total(totals).tolist()
        self.policy.train(was_training)
        mean = nll / max(count, 1.0)
        return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0))}
