"""Collecting one step's on-policy data: sample, score, and the trainer-side pieces of DAPO and DaGRPO.

* **Sampling**: ``num_generations`` completions for each of the step's prompts (rows grouped by prompt).
* **Scoring**: the reward of every completion, plus DAPO's soft overlong punishment when enabled.
* **Dynamic sampling** (DAPO): groups whose rewards are all equal carry no signal and are dropped; further
  rounds of prompts are sampled until ``prompts_per_step`` groups with signal are collected or
  ``max_sampling_rounds`` rounds have run (the batch may then hold fewer groups, never one without signal).
* **Truncated completions** can be masked out of the loss (DAPO's overlong filtering); they keep their reward.
* **Anchors** (DaGRPO): a group in which no completion succeeds gets its reference solution as one more row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from divalign.generation.sampling import Rollout, concat_rollouts
from divalign.groups import group_mean
from divalign.rewards import overlong_penalty


@dataclass
class Collected:
    rollout: Rollout
    prompts: list[str]  #: per row
    answers: list[str]  #: per row
    rewards: torch.Tensor  #: (B,) reward used for advantages (with the overlong punishment when enabled)
    task_rewards: torch.Tensor  #: (B,) the reward alone, as logged
    group_ids: torch.Tensor  #: (B,)
    num_groups: int
    group_size: int  #: rows per group before anchors; 1 when anchors make groups uneven
    anchors: torch.Tensor  #: (B,) bool: rows that are DaGRPO anchors
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


def step_generator(seed: int, step: int, round: int = 0) -> torch.Generator:
    """The sampling RNG of one step (and round): a pure function, so resume needs no RNG state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + round)


def _score(trainer, prompts, completions, answers, lengths, truncated) -> tuple[torch.Tensor, torch.Tensor]:
    task = torch.tensor(trainer.reward_fn(prompts, completions, answers), dtype=torch.float)
    buffer = getattr(trainer.options, "overlong_buffer", 0)
    if buffer == -1:
        buffer = max(1, trainer.config.max_new_tokens // 5)
    if not buffer:
        return task, task
    penalty = overlong_penalty(lengths, trainer.config.max_new_tokens, buffer,
                               getattr(trainer.options, "overlong_factor", 1.0))
    # A completion cut at the budget without its end token is longer than the budget allows.
    penalty = [p if not t else -getattr(trainer.options, "overlong_factor", 1.0) for p, t in zip(penalty, truncated)]
    return task + torch.tensor(penalty), task


def _sample(trainer, step: int, round: int, examples) -> tuple[Rollout, list[str]]:
    cfg = trainer.config
    rollout = trainer.sampler.generate([trainer.encode(ex.prompt) for ex in examples], cfg.max_new_tokens,
                                       cfg.temperature, generator=step_generator(cfg.seed, step, round),
                                       num_samples=cfg.num_generations)
    return rollout, trainer.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)


def collect(trainer, step: int) -> Collected:
    cfg, g = trainer.config, trainer.config.num_generations
    dynamic = getattr(trainer.options, "dynamic_sampling", False)
    rounds = getattr(trainer.options, "max_sampling_rounds", 1) if dynamic else 1
    timings = {"generate_s": 0.0, "score_s": 0.0}
    parts, prompts, answers, rewards, task_rewards = [], [], [], [], []
    sampled = kept = 0
    for round in range(rounds):
        t = time.perf_counter()
        examples = trainer.prompts.batch(step, cfg.prompts_per_step, round)
        rollout, texts = _sample(trainer, step, round, examples)
        timings["generate_s"] += time.perf_counter() - t
        t = time.perf_counter()
        row_prompts = [ex.prompt for ex in examples for _ in range(g)]
        row_answers = [ex.answer for ex in examples for _ in range(g)]
        reward, task = _score(trainer, row_prompts, texts, row_answers, rollout.lengths.int().tolist(),
                              rollout.truncated.tolist())
        keep = list(range(len(examples)))
        if dynamic:
            spread = reward.view(-1, g).max(-1).values - reward.view(-1, g).min(-1).values
            keep = [i for i in range(len(examples)) if spread[i] > 0][: cfg.prompts_per_step - kept]
        rows = [i * g + j for i in keep for j in range(g)]
        sampled += len(examples)
        kept += len(keep)
        if rows:
            index = torch.tensor(rows)
            parts.append(Rollout(rollout.prompt_ids[index], rollout.prompt_mask[index], rollout.completion_ids[index],
                                 rollout.completion_mask[index], rollout.logprobs[index], rollout.truncated[index]))
            prompts += [row_prompts[r] for r in rows]
            answers += [row_answers[r] for r in rows]
            rewards.append(reward[index])
            task_rewards.append(task[index])
        timings["score_s"] += time.perf_counter() - t
        if kept >= cfg.prompts_per_step:
            break
    if not parts:  # dynamic sampling found no group with signal: train on nothing this step
        return None
    rollout = concat_rollouts(parts, trainer.tokenizer.pad_token_id)
    rewards, task_rewards = torch.cat(rewards), torch.cat(task_rewards)
    if getattr(trainer.options, "mask_truncated", False):
        rollout.completion_mask = rollout.completion_mask * (~rollout.truncated).unsqueeze(-1).float()
    group_ids = torch.arange(kept).repeat_interleave(g)
    batch = Collected(rollout, prompts, answers, rewards, task_rewards, group_ids, kept, g,
                      torch.zeros(len(prompts), dtype=torch.bool), timings,
                      {"groups_sampled": sampled, "groups_kept": kept})
    if getattr(trainer.options, "anchors", False):
        add_anchors(trainer, batch)
    return batch


def add_anchors(trainer, batch: Collected) -> None:
    """Append each failing group's reference solution as one more row (see :mod:`divalign.objectives.dagrpo`)."""
    g = batch.group_size
    best = batch.task_rewards.view(-1, g).max(-1).values
    failing = [k for k in range(batch.num_groups) if best[k] < 1.0 and batch.answers[k * g].strip()]
    if not failing:
        return
    t = time.perf_counter()
    eos, budget = trainer.tokenizer.eos_token_id, trainer.config.max_new_tokens
    completions = [(trainer.tokenizer(batch.answers[k * g], add_special_tokens=False)["input_ids"] + [eos])[:budget]
                   for k in failing]
    width = max(len(c) for c in completions)
    ids = torch.full((len(failing), width), trainer.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(failing), width))
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = 1.0
    source_rows = torch.tensor([k * g for k in failing])
    anchor = Rollout(batch.rollout.prompt_ids[source_rows], batch.rollout.prompt_mask[source_rows], ids, mask,
                     torch.zeros((len(failing), width)), torch.zeros(len(failing), dtype=torch.bool))
    rows_prompts = [batch.prompts[k * g] for k in failing]
    rows_answers = [batch.answers[k * g] for k in failing]
    texts = trainer.tokenizer.batch_decode(ids, skip_special_tokens=True)
    reward, task = _score(trainer, rows_prompts, texts, rows_answers, [len(c) for c in completions],
                          [False] * len(failing))
    batch.rollout = concat_rollouts([batch.rollout, anchor], trainer.tokenizer.pad_token_id)
    batch.prompts += rows_prompts
    batch.answers += rows_answers
    batch.rewards = torch.cat([batch.rewards, reward])
    batch.task_rewards = torch.cat([batch.task_rewards, task])
    batch.group_ids = torch.cat([batch.group_ids, torch.tensor(failing)])
    batch.anchors = torch.cat([batch.anchors, torch.ones(len(failing), dtype=torch.bool)])
    batch.group_size = 1  # groups are uneven now: no shared prompt forward
    batch.timings["score_s"] += time.perf_counter() - t
    batch.stats["anchors"] = len(failing)


def reward_spread(rewards: torch.Tensor, group_ids: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-row standard deviation of its group's rewards (0 for groups without signal)."""
    centered = rewards - group_mean(rewards, group_ids, num_groups)[group_ids]
    return group_mean(centered * centered, group_ids, num_groups).sqrt()[group_ids]
