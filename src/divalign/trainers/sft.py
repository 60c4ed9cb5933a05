"""Supervised fine-tuning on (prompt, completion) examples: next-token loss on completion tokens only.

The loss is the mean negative log-likelihood over all completion tokens of the batch, computed with the same
:func:`~divalign.models.completion_logprobs` that RL and evaluation use.
"""

from __future__ import annotations

import random
import time

import torch

from divalign.data.prompts import Example
from divalign.generation.sampling import left_pad
from divalign.models import SequenceBatch, completion_logprobs
from divalign.trainers.optim import make_optimizer, make_schedule


def encode_examples(tokenizer, examples: list[Example]) -> SequenceBatch:
    """Prompts left-padded, completions (answer + end-of-sequence) right-padded, as one batch."""
    prompts = [tokenizer(ex.prompt)["input_ids"] for ex in examples]
    completions = [tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for ex in examples]
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    width = max(len(c) for c in completions)
    comp = torch.full((len(examples), width), tokenizer.pad_token_id, dtype=torch.long)
    comp_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, c in enumerate(completions):
        comp[i, : len(c)] = torch.tensor(c)
        comp_mask[i, : len(c)] = 1
    return SequenceBatch(torch.cat([prompt_ids, comp], 1), torch.cat([prompt_mask, comp_mask], 1),
                         prompt_ids.shape[1])


def sft_loss(model, batch: SequenceBatch) -> torch.Tensor:
    logprobs, _ = completion_logprobs(model, batch)
    mask = batch.completion_mask
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)


class SFTTrainer:
    """Minibatches drawn from a fixed list of examples in a seeded order (a pure function of step)."""

    def __init__(self, model, tokenizer, examples: list[Example], batch_size: int, learning_rate: float,
                 total_steps: int, seed: int = 0, schedule: str = "constant", warmup_steps: int = 0,
                 weight_decay: float = 0.0, max_grad_norm: float = 1.0):
        self.policy, self.tokenizer = model, tokenizer
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.max_grad_norm = max_grad_norm
        self.optimizer = make_optimizer(model, learning_rate, weight_decay)
        self.scheduler = make_schedule(self.optimizer, schedule, warmup_steps, total_steps)
        self._encoded = {}

    def _batch(self, step: int) -> list[Example]:
        n = len(self.examples)
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, i = divmod(k, n)
            if epoch not in self._encoded:
                order = list(range(n))
                random.Random(f"sft-{self.seed}-{epoch}").shuffle(order)
                self._encoded = {epoch: order}
            out.append(self.examples[self._encoded[epoch][i]])
        return out

    def state_dict(self, step: int) -> dict:
        return {"step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> int:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        self.policy.train()
        batch = encode_examples(self.tokenizer, self._batch(step))
        loss = sft_loss(self.policy, batch)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm or float("inf")))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"step": step + 1, "loss": float(loss.item()), "grad_norm": grad_norm, "lr": lr,
                "step_s": time.perf_counter() - t0}
