"""Reward model training: a scalar head on a causal-LM backbone, trained on preference pairs with the
Bradley–Terry objective (:mod:`divalign.objectives.reward`).

The model is ``AutoModelForSequenceClassification`` with one label, built from a causal-LM folder (the backbone
keeps its weights, the head starts random) and saved in that format, so transformers loads it back as a
sequence classifier. It reads the score at the last non-padding token of prompt + response.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from divalign.data.encoding import encode_texts
from divalign.data.order import EpochOrder
from divalign.data.preferences import Pair
from divalign.models import sequence_scores
from divalign.objectives.reward import BradleyTerryOptions, bradley_terry
from divalign.parallel import World
from divalign.trainers.engine import Engine
from divalign.trainers.loop import Clock
from divalign.trainers.optim import Optimization
from divalign.trainers.options import (
    AdapterOptions,
    BatchOptions,
    ModelOptions,
    OptimizerOptions,
    PairDataOptions,
    RunOptions,
    TrainingDeviceOptions,
)


@dataclass
class RMConfig(ModelOptions, AdapterOptions, PairDataOptions, BatchOptions, TrainingDeviceOptions, OptimizerOptions,
               RunOptions):
    """Bradley-Terry reward model on preference pairs, started from a causal-LM folder (or a reward-model folder to
    continue); saved as AutoModelForSequenceClassification."""

    output_dir: str = "runs/rm"
    margin: float = 0.0
    """Margin m required between chosen and rejected scores."""
    center_rewards_coefficient: float = 0.0
    """Weight c of the centering term (r_w + r_l)^2."""
    batch_size: int = 16
    learning_rate: float = 1e-4
    lr_schedule: str = "cosine"


class RewardModelTrainer:
    def __init__(self, model, tokenizer, config: RMConfig, train: list[Pair], eval_pairs: list[Pair] | None = None,
                 world: World | None = None):
        self.policy, self.tokenizer, self.config = model, tokenizer, config
        self.engine = Engine([model], world or World(), config)
        self.pairs, self.eval_pairs = train, eval_pairs
        self.order = EpochOrder(len(train), f"rm-{config.seed}")
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * len(train) / config.batch_size))
        self.optimization = Optimization(model, config, self.total_steps, self.engine)
        self.options = BradleyTerryOptions(config.margin, config.center_rewards_coefficient)

    def state_dict(self, step: int) -> dict:
        return {"step": step, **self.optimization.state_dict()}

    def load_state_dict(self, state: dict) -> int:
        self.optimization.load_state_dict(state)
        return int(state["step"])

    def _pair_scores(self, model, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [p.prompt for p in pairs for _ in range(2)]
        responses = [r for p in pairs for r in (p.chosen, p.rejected)]
        templated = [p.templated for p in pairs for _ in range(2)]
        ids, mask = encode_texts(self.tokenizer, prompts, responses, self.config.max_length, templated)
        s = sequence_scores(model, ids.to(self.engine.device), mask.to(self.engine.device))
        return s[0::2], s[1::2]

    def step(self, step: int) -> dict:
        """One optimizer step over the step's pairs: this process's share, in micro-batches, each loss a share of
        the whole batch's mean."""
        clock, cfg = Clock(), self.config
        self.policy.train()
        pairs = [self.pairs[i] for i in self.order.take(step * cfg.batch_size, cfg.batch_size)]
        share = self.engine.world.share(len(pairs))
        micro = cfg.micro_batch_size or max(len(share), 1)

        def loss_of(part: list[Pair]):
            def run():
                chosen, rejected = self._pair_scores(self.policy, part)
                loss, metrics = bradley_terry(chosen, rejected, self.options, len(pairs))
                return loss, {"loss": float(loss.item()), **metrics}
            return run

        passes = [loss_of(pairs[start:min(start + micro, share.stop)]) for start in range(share.start, share.stop, micro)]
        sums = self.engine.accumulate(passes, filler=loss_of(pairs[:1]))
        row = {"step": step + 1, **sums, **self.optimization.step(sums["loss"])}
        if self.eval_pairs and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == self.total_steps):
            row["eval_accuracy"] = self.evaluate(self.eval_pairs)
        row["step_s"] = clock.elapsed()
        return row

    @torch.no_grad()
    def evaluate(self, pairs: list[Pair], chunk: int = 32) -> float:
        """Held-out pairwise accuracy: the share of pairs scored chosen > rejected (ties count half)."""
        was_training = self.policy.training
        self.policy.eval()
        share = self.engine.evaluation_share(len(pairs))
        total = torch.zeros(1, dtype=torch.float64)
        with self.engine.autocast():
            for start in range(share.start, share.stop, chunk):
                chosen, rejected = self._pair_scores(self.policy, pairs[start : min(start + chunk, share.stop)])
                total += float((chosen > rejected).sum() + 0.5 * (chosen == rejected).sum())
        self.policy.train(was_training)
        return float(self.engine.evaluation_total(total)) / len(pairs)


def length_baseline_accuracy(pairs: list[Pair]) -> float:
    """Accuracy of "the longer response is preferred" (characters; ties count half)."""
    wins = sum(
        1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0 for p in pairs
    )
    return wins / len(pairs)
