"""Collecting one step's on-policy data: sample, score, and the rollout pieces an objective asks for in its
:class:`~divalign.objectives.RolloutPlan`.

* **Sampling**: ``num_generations`` completions for each of the step's prompts (rows grouped by prompt), each
  prompt's from a seed that is a pure function of (seed, step, round, its place in the step), so a resumed run
  samples what an uninterrupted one would.
* **Scoring**: the reward of every completion, plus DAPO's soft overlong punishment when the plan asks for it;
  and a fine-grained score of every completion when an estimator needs one (DaGRPO).
* **Dynamic sampling** (DAPO): groups whose rewards are all equal carry no signal and are dropped; further rounds
  of prompts are sampled until ``prompts_per_step`` groups with signal are collected or ``max_sampling_rounds``
  rounds have run (the batch may then hold fewer groups, never one without signal).
* **Truncated completions** can be masked out of the loss (DAPO's overlong filtering); they keep their reward.
* **Anchors** (DaGRPO): a group in which no completion succeeds gets its reference solution as one more row.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from divalign.data.encoding import prompt_ids
from divalign.generation import Rollout, Sampler, concat_rollouts
from divalign.objectives import RolloutPlan
from divalign.parallel import World
from divalign.rewards import Reward, overlong_penalty


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
    scores: torch.Tensor | None = None  #: (B,) fine-grained scores, when a scorer is given
    timings: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def to(self, device) -> Collected:
        """The batch with its tensors on ``device`` (the trainer's)."""
        self.rollout = self.rollout.to(device)
        for name in ("rewards", "task_rewards", "group_ids", "anchors", "scores"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def groups(self) -> list[list[int]]:
        """Row indices of each group (anchors join their group)."""
        rows = [[] for _ in range(self.num_groups)]
        for row, gid in enumerate(self.group_ids.tolist()):
            rows[gid].append(row)
        return rows


@dataclass(frozen=True)
class Sampling:
    """How many completions of how many prompts, how long, at which temperature, from which seed."""

    prompts_per_step: int
    num_generations: int
    max_new_tokens: int
    temperature: float
    seed: int
    dtype: torch.dtype | None = None  #: the precision of sampling (None: the run's)


def prompt_seed(seed: int, step: int, round: int, index: int) -> int:
    """The sampling seed of the ``index``-th prompt of a step's round: a pure function, so a resumed run needs no
    RNG state and a prompt's completions do not depend on how the step's prompts are split over processes."""
    return ((seed * 1_000_003 + step) * 131 + round) * 1_000_033 + index


class RolloutCollector:
    """Builds each step's :class:`Collected` batch from a prompt source, a sampler, a reward and the objective's
    rollout plan (and a fine-grained scorer when the advantage estimator reads scores).

    With several processes (``engine.world``) each samples and scores its share of every round's prompts and the
    round is gathered, so every process holds the whole batch, the same one a single process would collect
    (a prompt's completions come from its own seed)."""

    def __init__(self, prompts, sampler: Sampler, tokenizer, reward: Reward, sampling: Sampling, plan: RolloutPlan,
                 scorer: Reward | None = None, engine=None):
        self.prompts, self.sampler, self.tokenizer = prompts, sampler, tokenizer
        self.reward, self.sampling, self.plan, self.scorer = reward, sampling, plan, scorer
        self.engine = engine
        self.world = engine.world if engine is not None else World()
        self._prompt_ids: dict[str, list[int]] = {}

    def collect(self, step: int) -> Collected | None:
        """The step's batch, or None when dynamic sampling found no group with signal."""
        s, plan, g = self.sampling, self.plan, self.sampling.num_generations
        rounds = plan.max_sampling_rounds if plan.dynamic_sampling else 1
        timings = {"generate_s": 0.0, "score_s": 0.0}
        parts, prompts, answers, rewards, task_rewards = [], [], [], [], []
        sampled = kept = failures = 0
        for round in range(rounds):
            t = time.perf_counter()
            examples = self.prompts.batch(step, s.prompts_per_step, round)
            mine = self.world.share(len(examples))
            with self._generating():
                rollout = self.sampler.generate([self._encode(examples[i]) for i in mine], s.max_new_tokens,
                                                s.temperature, num_samples=g,
                                                seeds=[prompt_seed(s.seed, step, round, i) for i in mine])
            texts = self.tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
            timings["generate_s"] += time.perf_counter() - t
            t = time.perf_counter()
            row_prompts = [examples[i].prompt for i in mine for _ in range(g)]
            row_answers = [examples[i].answer for i in mine for _ in range(g)]
            reward, task = self._score(row_prompts, texts, row_answers, rollout.lengths.int().tolist(),
                                       rollout.truncated.tolist())
            failures += self.reward.failures
            if self.world.size > 1:  # every process gets the whole round, in prompt order
                rollout, reward, task, failures = self._gathered(rollout, reward, task, failures)
                row_prompts = [ex.prompt for ex in examples for _ in range(g)]
                row_answers = [ex.answer for ex in examples for _ in range(g)]
            keep = list(range(len(examples)))
            if plan.dynamic_sampling:
                spread = reward.view(-1, g).max(-1).values - reward.view(-1, g).min(-1).values
                keep = [i for i in range(len(examples)) if spread[i] > 0][: s.prompts_per_step - kept]
            rows = [i * g + j for i in keep for j in range(g)]
            sampled += len(examples)
            kept += len(keep)
            if rows:
                index = torch.tensor(rows)
                parts.append(rollout.select(index))
                prompts += [row_prompts[r] for r in rows]
                answers += [row_answers[r] for r in rows]
                rewards.append(reward[index])
                task_rewards.append(task[index])
            timings["score_s"] += time.perf_counter() - t
            if kept >= s.prompts_per_step:
                break
        if not parts:
            return None
        rollout = concat_rollouts(parts, self.tokenizer.pad_token_id)
        if plan.mask_truncated:
            rollout.completion_mask = rollout.completion_mask * (~rollout.truncated).unsqueeze(-1).float()
        batch = Collected(rollout, prompts, answers, torch.cat(rewards), torch.cat(task_rewards),
                          torch.arange(kept).repeat_interleave(g), kept, g, torch.zeros(len(prompts), dtype=torch.bool),
                          timings=timings, stats={"groups_sampled": sampled, "groups_kept": kept,
                                                  "reward_failures": failures})
        if plan.anchors:
            self._add_anchors(batch)
        if self.scorer is not None:
            t = time.perf_counter()
            texts = self.tokenizer.batch_decode(batch.rollout.completion_ids, skip_special_tokens=True)
            batch.scores = self._once(lambda: torch.tensor(self.scorer(batch.prompts, texts, batch.answers),
                                                           dtype=torch.float))
            timings["score_s"] += time.perf_counter() - t
        return batch

    def _generating(self):
        if self.engine is None:
            return contextlib.nullcontext()
        return self.engine.generating(self.sampling.dtype)

    def _gathered(self, rollout: Rollout, reward, task, failures: int):
        """The processes' shares of a round joined in rank (that is, prompt) order."""
        parts = self.world.gather((Rollout(*(t.cpu() for t in (rollout.prompt_ids, rollout.prompt_mask,
                                                                 rollout.completion_ids, rollout.completion_mask,
                                                                 rollout.logprobs, rollout.truncated))),
                                   reward, task, failures))
        device = rollout.prompt_ids.device
        joined = concat_rollouts([p[0] for p in parts], self.tokenizer.pad_token_id)
        joined = Rollout(*(t.to(device) for t in (joined.prompt_ids, joined.prompt_mask, joined.completion_ids,
                                                  joined.completion_mask, joined.logprobs, joined.truncated)))
        return (joined, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]),
                sum(p[3] for p in parts))

    def _once(self, compute):
        """``compute()`` run by the main process alone and shared with the others (a reward is called once)."""
        value = compute() if self.world.main else None
        return self.world.gather(value)[0] if self.world.size > 1 else value

    def _encode(self, example) -> list[int]:
        if example.prompt not in self._prompt_ids:
            self._prompt_ids[example.prompt] = prompt_ids(self.tokenizer, example.prompt, example.templated)
        return self._prompt_ids[example.prompt]

    def _score(self, prompts, completions, answers, lengths, truncated) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward with the overlong punishment when the plan asks for it, the reward alone)."""
        task = torch.tensor(self.reward(prompts, completions, answers), dtype=torch.float)
        budget, buffer, factor = self.sampling.max_new_tokens, self.plan.overlong_buffer, self.plan.overlong_factor
        if buffer == -1:
            buffer = max(1, budget // 5)
        if not buffer:
            return task, task
        penalty = overlong_penalty(lengths, budget, buffer, factor)
        # A completion cut at the budget without its end token is longer than the budget allows.
        penalty = [p if not t else -factor for p, t in zip(penalty, truncated)]
        return task + torch.tensor(penalty), task

    def _add_anchors(self, batch: Collected) -> None:
        """Append each failing group's reference solution as one more row (docs/algorithms.md#dagrpo)."""
        g = batch.group_size
        best = batch.task_rewards.view(-1, g).max(-1).values
        failing = [k for k in range(batch.num_groups) if best[k] < 1.0 and batch.answers[k * g].strip()]
        if not failing:
            return
        t = time.perf_counter()
        eos, budget = self.tokenizer.eos_token_id, self.sampling.max_new_tokens
        completions = [(self.tokenizer(batch.answers[k * g], add_special_tokens=False)["input_ids"] + [eos])[:budget]
                       for k in failing]
        width = max(len(c) for c in completions)
        ids = torch.full((len(failing), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(failing), width))
        for i, c in enumerate(completions):
            ids[i, : len(c)] = torch.tensor(c)
            mask[i, : len(c)] = 1.0
        source_rows = torch.tensor([k * g for k in failing])
        device = batch.rollout.prompt_ids.device
        anchor = Rollout(batch.rollout.prompt_ids[source_rows], batch.rollout.prompt_mask[source_rows], ids.to(device),
                         mask.to(device), torch.zeros((len(failing), width), device=device),
                         torch.zeros(len(failing), dtype=torch.bool, device=device))
        rows_prompts = [batch.prompts[k * g] for k in failing]
        rows_answers = [batch.answers[k * g] for k in failing]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        reward, task = self._once(lambda: self._score(rows_prompts, texts, rows_answers, [len(c) for c in completions],
                                                      [False] * len(failing)))
        batch.rollout = concat_rollouts([batch.rollout, anchor], self.tokenizer.pad_token_id)
        batch.prompts += rows_prompts
        batch.answers += rows_answers
        batch.rewards = torch.cat([batch.rewards, reward])
        batch.task_rewards = torch.cat([batch.task_rewards, task])
        batch.group_ids = torch.cat([batch.group_ids, torch.tensor(failing)])
        batch.anchors = torch.cat([batch.anchors, torch.ones(len(failing), dtype=torch.bool)])
        batch.group_size = 1  # groups are uneven now: no shared prompt forward
        batch.timings["score_s"] += time.perf_counter() - t
        batch.stats["anchors"] = len(failing)
