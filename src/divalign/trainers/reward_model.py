"""Reward model training: a scalar head on a causal-LM backbone, trained on preference pairs with the
Bradley–Terry objective (:mod:`divalign.objectives.reward`).

The model is ``AutoModelForSequenceClassification`` with one label, built from a causal-LM folder (the backbone
keeps its weights, the head starts random) and saved in that format, so transformers loads it back as a
sequence classifier. It reads the score at the last non-padding token of prompt + response.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from divalign.data.order import EpochOrder
from divalign.data.preferences import Pair
from divalign.data.tokens import fit, pad
from divalign.errors import UserError
from divalign.objectives.reward import BradleyTerryOptions, bradley_terry
from divalign.trainers.loop import RunOptions
from divalign.trainers.optim import Optimization, OptimizerOptions


@dataclass
class RMConfig(RunOptions, OptimizerOptions):
    """Bradley-Terry reward model on preference pairs; saved as AutoModelForSequenceClassification."""

    model: str = ""
    """Causal-LM folder whose backbone starts the reward model (or a reward-model folder to continue)."""
    data: str = ""
    """Pairs file (JSONL, JSON, CSV, Parquet with prompt/chosen/rejected) or hh-rlhf:harmless-base, ..."""
    eval_data: str = ""
    """Optional held-out pairs; default: eval_fraction of data, split by prompt."""
    eval_fraction: float = 0.1
    """Share of prompts held out when eval_data is empty."""
    output_dir: str = "runs/rm"
    """Run folder: config, metrics.jsonl, checkpoints/ and the final model/."""
    prompt_field: str = "prompt"
    """Field holding the prompt."""
    chosen_field: str = "chosen"
    """Field holding the preferred response."""
    rejected_field: str = "rejected"
    """Field holding the dispreferred response."""
    drop_identical_pairs: bool = False
    """Leave out pairs whose chosen and rejected are identical (with a warning) instead of stopping."""
    max_length: int = 256
    """Maximum tokens of prompt + response; prompts are cut from the left, responses from the right."""
    batch_size: int = 16
    """Pairs per optimizer step."""
    micro_batch_size: int = 0
    """Pairs per forward/backward (0: the whole batch)."""
    epochs: float = 1.0
    """Passes over the data (used when steps is 0)."""
    steps: int = 0
    """Optimizer steps (0: derived from epochs)."""
    learning_rate: float = 1e-4
    lr_schedule: str = "cosine"
    margin: float = 0.0
    """Margin m required between chosen and rejected scores."""
    center_rewards_coefficient: float = 0.0
    """Weight c of the centering term (r_w + r_l)^2."""
    eval_every: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of the head's initialisation, the data order and the evaluation split."""


def load_reward_model(path, trust_remote_code: bool = False, seed: int = 0):
    """A one-label sequence classifier from a causal-LM or reward-model folder, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from divalign.models import check_causal_lm_folder, disable_dropout, load_tokenizer

    check_causal_lm_folder(path)
    tokenizer = load_tokenizer(path, trust_remote_code)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=1,
                pad_token_id=tokenizer.pad_token_id,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"'{path}': cannot build a reward model ({str(exc).splitlines()[0]})") from None
    disable_dropout(model)
    return model, tokenizer


def encode_texts(
    tokenizer, prompts: list[str], responses: list[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt + response ids and attention mask; prompts lose their first tokens if too long."""
    rows = []
    for prompt, response in zip(prompts, responses):
        p, r = fit(
            tokenizer(prompt)["input_ids"], tokenizer(response, add_special_tokens=False)["input_ids"], max_length
        )
        rows.append(p + r)
    return pad(rows, tokenizer.pad_token_id)


def scores(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float()


class RewardModelTrainer:
    def __init__(self, model, tokenizer, config: RMConfig, train: list[Pair], eval_pairs: list[Pair] | None = None):
        self.policy, self.tokenizer, self.config = model, tokenizer, config
        self.pairs, self.eval_pairs = train, eval_pairs
        self.order = EpochOrder(len(train), f"rm-{config.seed}")
        self.total_steps = config.steps or max(1, math.ceil(config.epochs * len(train) / config.batch_size))
        self.optimization = Optimization(model, config, self.total_steps)
        self.options = BradleyTerryOptions(config.margin, config.center_rewards_coefficient)

    def state_dict(self, step: int) -> dict:
        return {"step": step, **self.optimization.state_dict()}

    def load_state_dict(self, state: dict) -> int:
        self.optimization.load_state_dict(state)
        return int(state["step"])

    def _pair_scores(self, model, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [p.prompt for p in pairs for _ in range(2)]
        responses = [r for p in pairs for r in (p.chosen, p.rejected)]
        ids, mask = encode_texts(self.tokenizer, prompts, responses, self.config.max_length)
        s = scores(model, ids, mask)
        return s[0::2], s[1::2]

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        cfg = self.config
        self.policy.train()
        pairs = [self.pairs[i] for i in self.order.take(step * cfg.batch_size, cfg.batch_size)]
        micro = cfg.micro_batch_size or len(pairs)
        loss_total, summed = 0.0, {}
        for start in range(0, len(pairs), micro):
            chosen, rejected = self._pair_scores(self.policy, pairs[start : start + micro])
            loss, metrics = bradley_terry(chosen, rejected, self.options, len(pairs))
            loss.backward()
            loss_total += float(loss.item())
            for key, value in metrics.items():
                summed[key] = summed.get(key, 0.0) + value
        row = {"step": step + 1, "loss": loss_total, **summed, **self.optimization.step()}
        if self.eval_pairs and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == self.total_steps):
            row["eval_accuracy"] = self.evaluate(self.eval_pairs)
        row["step_s"] = time.perf_counter() - t0
        return row

    @torch.no_grad()
    def evaluate(self, pairs: list[Pair], chunk: int = 32) -> float:
        """Held-out pairwise accuracy: the share of pairs scored chosen > rejected (ties count half)."""
        was_training = self.policy.training
        self.policy.eval()
        total = 0.0
        for start in range(0, len(pairs), chunk):
            chosen, rejected = self._pair_scores(self.policy, pairs[start : start + chunk])
            total += float((chosen > rejected).sum() + 0.5 * (chosen == rejected).sum())
        self.policy.train(was_training)
        return total / len(pairs)


def length_baseline_accuracy(pairs: list[Pair]) -> float:
    """Accuracy of "the longer response is preferred" (characters; ties count half)."""
    wins = sum(
        1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0 for p in pairs
    )
    return wins / len(pairs)
