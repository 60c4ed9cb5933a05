"""Advantage estimators for grouped rollouts, behind a name registry with one signature
(docs/algorithms.md#advantage-estimators).

Every estimator is ``fn(inputs: EstimatorInputs, options) -> Advantages``: rows are responses, ``group_ids`` tags
the prompt each belongs to, and a KL penalty the objective folds into the reward arrives per token in
``inputs.kl``. Registration declares what an estimator needs beyond rewards and groups (a value head's
predictions, fine-grained scores) and the options class it reads (an objective whose options derive from it can
use it). Pure functions of tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from divalign.groups import group_mean, group_sum

#: Added to the group standard deviation before dividing (as TRL does), so near-constant groups stay finite.
STD_EPS = 1e-4
#: Relative spread below which a group's rewards count as equal (float rounding of the mean is ~1e-7).
EQUAL_TOLERANCE = 1e-6


@dataclass
class EstimatorInputs:
    rewards: Tensor  #: (B,) one scalar reward per response
    group_ids: Tensor  #: (B,) prompt index of each response
    num_groups: int
    mask: Tensor  #: (B, T) 1.0 on real completion tokens
    kl: Tensor | None = None  #: (B, T) per-token KL estimate (log π_old − log π_ref, or k3) on real tokens
    kl_coef: float = 0.0  #: weight of ``kl`` folded into the reward
    values: Tensor | None = None  #: (B, T) the value head's predictions at sampling time
    scores: Tensor | None = None  #: (B,) fine-grained scores of the responses

    def sequence_rewards(self) -> Tensor:
        """The reward with the KL penalty folded in per sequence: r_i − c·Σ_t kl_{i,t}."""
        return self.rewards if self.kl is None else self.rewards - self.kl_coef * self.kl.sum(-1)


@dataclass
class Advantages:
    sequence: Tensor  #: (B,) one advantage per response (zeros for a per-token estimator)
    token: Tensor | None = None  #: (B, T) per-token advantages, when the estimator gives them
    returns: Tensor | None = None  #: (B, T) value targets, when the estimator gives them


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[[EstimatorInputs, Any], Advantages]
    options: type | None  #: the options class the estimator reads (None: it reads none)
    needs_values: bool  #: reads a value head's predictions (the trainer then trains one)
    needs_scores: bool  #: reads fine-grained scores of the responses
    min_group_size: int  #: responses it needs per prompt

    def usable_with(self, options) -> bool:
        """Whether an objective with these options can use this estimator."""
        return self.options is None or isinstance(options, self.options)


_REGISTRY: dict[str, Estimator] = {}


def register(name: str, *, options: type | None = None, needs_values: bool = False, needs_scores: bool = False,
             min_group_size: int = 1):
    """Decorator: register an estimator ``fn(inputs, options) -> Advantages`` under ``name``."""

    def decorate(fn):
        if name in _REGISTRY:
            raise ValueError(f"advantage estimator '{name}' registered twice")
        _REGISTRY[name] = Estimator(name, fn, options, needs_values, needs_scores, min_group_size)
        return fn

    return decorate


def get(name: str) -> Estimator:
    if name not in _REGISTRY:
        raise ValueError(f"unknown advantage estimator '{name}' (expected one of: {', '.join(names())})")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------- the estimators' maths


def group_normalized(rewards: Tensor, group_ids: Tensor, num_groups: int, scale: bool = True) -> Tensor:
    """GRPO (arXiv 2402.03300): a_i = (r_i − mean_g(r)) / (std_g(r) + 1e-4).

    The standard deviation is the population one (divide by G), so with G = 2 and binary rewards the
    advantages are ±1 (TRL uses the sample std, a factor √((G−1)/G) apart). ``scale=False`` gives the
    Dr. GRPO advantage r_i − mean_g(r) (arXiv 2503.20783). A group whose rewards are all equal gets zeros.
    """
    mean = group_mean(rewards, group_ids, num_groups)[group_ids]
    centered = rewards - mean
    std = group_mean(centered * centered, group_ids, num_groups).sqrt()[group_ids]
    # A group whose rewards are equal up to rounding of the mean carries no signal: exactly zero, not ±1e-4.
    centered = torch.where(std > EQUAL_TOLERANCE * (1 + mean.abs()), centered, torch.zeros_like(centered))
    return centered / (std + STD_EPS) if scale else centered


def leave_one_out(rewards: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """RLOO (arXiv 2402.14740): a_i = r_i − mean of the other responses' rewards in the group.

    Needs at least two responses per group; the advantages of each group sum to zero.
    """
    ones = torch.ones_like(rewards)
    counts = group_sum(ones, group_ids, num_groups)
    if bool((counts[counts > 0] < 2).any()):
        raise ValueError("RLOO needs at least 2 responses per prompt (num_generations >= 2)")
    sums = group_sum(rewards, group_ids, num_groups)[group_ids]
    n = counts[group_ids]
    return rewards - (sums - rewards) / (n - 1)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over completion tokens (Schulman et al., arXiv 1506.02438).

    ``rewards``, ``values``, ``mask``: (B, T). δ_t = r_t + γ·V_{t+1} − V_t (V after the last real token is 0),
    A_t = δ_t + γλ·A_{t+1}, returns R_t = A_t + V_t. Padding positions get 0.
    """
    rewards, values, mask = rewards * mask, values * mask, mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the masked entries (PPO's advantage whitening); padding stays 0."""
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    var = (((values - mean) * mask) ** 2).sum() / count
    return (values - mean) * torch.rsqrt(var + eps) * mask


def distinct_pairs(rewards: Tensor, scores: Tensor, group_ids: Tensor, num_groups: int, threshold: float,
                   scale: bool = True) -> Tensor:
    """DaGRPO-style advantages (arXiv 2512.06337, rebuilt; docs/algorithms.md#dagrpo).

    The group-relative advantage is a mean of pairwise differences, r_i − mean(r) = (1/G)·Σ_j (r_i − r_j). Here a
    pair (i, j) of the same group only counts when its fine-grained scores differ by at least ``threshold``
    (|s_i − s_j| ≥ τ): a_i = Σ_j m_ij (r_i − r_j) / Σ_j m_ij, divided by the group's reward standard deviation
    when ``scale``. A response with no distinct partner gets 0.
    """
    same_group = group_ids[:, None] == group_ids[None, :]
    distinct = same_group & ((scores[:, None] - scores[None, :]).abs() >= threshold)
    diffs = (rewards[:, None] - rewards[None, :]) * distinct
    counts = distinct.sum(-1)
    adv = torch.where(counts > 0, diffs.sum(-1) / counts.clamp(min=1), torch.zeros_like(rewards))
    if not scale:
        return adv
    centered = rewards - group_mean(rewards, group_ids, num_groups)[group_ids]
    std = group_mean(centered * centered, group_ids, num_groups).sqrt()[group_ids]
    return adv / (std + STD_EPS)


# ----------------------------------------------------------------------------- options read by estimators


@dataclass
class GAEOptions:
    """Options of generalised advantage estimation (an objective with a value head inherits them)."""

    gamma: float = 1.0
    """Discount of GAE."""
    lam: float = 0.95
    """lambda of GAE."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the batch's tokens."""

    def __post_init__(self):
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("gamma and lam must be in [0, 1]")


@dataclass
class DistinctOptions:
    """Options of the distinctiveness-masked estimator (an objective using it inherits them)."""

    threshold: float = 0.1
    """Pairs whose fine-grained scores differ by less than this are masked."""
    score: str = "partial"
    """Fine-grained score: partial (partial credit) or any reward spec (e.g. rm:FOLDER)."""

    def __post_init__(self):
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0 (got {self.threshold})")


# ----------------------------------------------------------------------------- the registered estimators


@register("group")
def _group(inputs: EstimatorInputs, options) -> Advantages:
    """Group-normalised (GRPO)."""
    return Advantages(group_normalized(inputs.sequence_rewards(), inputs.group_ids, inputs.num_groups))


@register("group_mean")
def _group_mean(inputs: EstimatorInputs, options) -> Advantages:
    """Group-centred, no std division (Dr. GRPO)."""
    return Advantages(group_normalized(inputs.sequence_rewards(), inputs.group_ids, inputs.num_groups, scale=False))


@register("rloo", min_group_size=2)
def _rloo(inputs: EstimatorInputs, options) -> Advantages:
    """Leave-one-out baseline (RLOO)."""
    return Advantages(leave_one_out(inputs.sequence_rewards(), inputs.group_ids, inputs.num_groups))


@register("gae", options=GAEOptions, needs_values=True)
def _gae(inputs: EstimatorInputs, options: GAEOptions) -> Advantages:
    """Per-token GAE from the value head: the KL penalty on every token, the reward at the last real token."""
    token_rewards = torch.zeros_like(inputs.values) if inputs.kl is None else -inputs.kl_coef * inputs.kl
    last = (inputs.mask.sum(-1).long() - 1).clamp(min=0)
    token_rewards[torch.arange(len(inputs.rewards)), last] += inputs.rewards
    adv, returns = gae(token_rewards, inputs.values, inputs.mask, options.gamma, options.lam)
    if options.whiten_advantages:
        adv = whiten(adv, inputs.mask)
    return Advantages(torch.zeros_like(inputs.rewards), adv, returns)


@register("distinct", options=DistinctOptions, needs_scores=True)
def _distinct(inputs: EstimatorInputs, options: DistinctOptions) -> Advantages:
    """Distinctiveness-masked pairs (DaGRPO)."""
    return Advantages(distinct_pairs(inputs.sequence_rewards(), inputs.scores, inputs.group_ids, inputs.num_groups,
                                     options.threshold))
