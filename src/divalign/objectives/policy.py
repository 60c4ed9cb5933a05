"""What the policy-gradient objectives share (docs/algorithms.md#online-objectives): their common options — the KL
term to the reference and the aggregation (:class:`PolicyOptions`), the ratio clip (:class:`ClipOptions`) — and the
per-token pieces built from them: the importance ratio, the advantage of every token, PPO's clipped surrogate
with dual clip (docs/algorithms.md#dual-clip), the KL term (docs/algorithms.md#kl-estimators), the reduction to the
loss (docs/algorithms.md#aggregation) and the truncated importance weights against a sampler that is not the
trainer (docs/algorithms.md#truncated-importance-sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.advantages.group import SINGLETON_GROUPS
from divalign.objectives import kl
from divalign.objectives.aggregation import EMPTY_RESPONSES, aggregate, check_mode
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.interface import OnlineOptions


@dataclass
class PolicyOptions(OnlineOptions):
    """The KL term and the aggregation of a policy-gradient objective."""

    beta: float = 0.0
    """Weight of the KL penalty to the reference policy (0 disables it and the reference model)."""
    aggregation: str = "seq_mean_token_mean"
    """seq_mean_token_mean (GRPO), token_mean (DAPO), seq_mean_token_sum_norm (Dr. GRPO), token_sum,
    seq_mean_token_sum or group_token_mean."""
    kl_estimator: str = "k3"
    """Per-token KL estimate of the penalty: k1, k2, k3, abs, k1+ or k3+ (value of k1/k3, gradient of k2)."""
    kl_bias_correction: bool = False
    """Multiply the KL estimate by the importance ratio π_θ/π_old (TRL's use_bias_correction_kl)."""
    empty_responses: str = "count"
    """How responses without a real token (e.g. masked as truncated) count in the sequence means: count (TRL) or
    skip (verl)."""
    singleton_groups: str = "zero"
    """What a prompt with one response gets from the group estimators: zero (no comparison, no gradient) or raw
    (its reward, verl's convention; allows num-generations 1)."""

    def __post_init__(self):
        check_mode(self.aggregation, "aggregation")
        if self.singleton_groups not in SINGLETON_GROUPS:
            raise ValueError(f"singleton_groups: expected one of {', '.join(SINGLETON_GROUPS)} "
                             f"(got '{self.singleton_groups}')")
        if self.empty_responses not in EMPTY_RESPONSES:
            raise ValueError(f"empty_responses: expected one of {', '.join(EMPTY_RESPONSES)} "
                             f"(got '{self.empty_responses}')")
        kl.check_estimator(self.kl_estimator, "kl_estimator")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0 (got {self.beta})")

    def needs_reference(self) -> bool:
        return self.beta > 0


@dataclass
class ClipOptions(PolicyOptions):
    """PPO's ratio clip, with dual clip."""

    epsilon_low: float = 0.2
    """Lower clip range: ρ is clipped below at 1 − epsilon_low."""
    epsilon_high: float = 0.2
    """Upper clip range: ρ is clipped above at 1 + epsilon_high (DAPO uses 0.28)."""
    dual_clip: float = 0.0
    """Dual-clip PPO (arXiv 1912.09729): for negative advantages the loss is capped at −c·A (c > 1; verl uses 3;
    0: off)."""

    def __post_init__(self):
        super().__post_init__()
        if self.epsilon_low < 0 or self.epsilon_high < 0:
            raise ValueError("epsilon_low and epsilon_high must be >= 0")
        if self.dual_clip != 0 and not self.dual_clip > 1:
            raise ValueError(f"dual_clip must be 0 (off) or > 1 (got {self.dual_clip})")


def token_advantages(batch: OnlineBatch) -> Tensor:
    """The advantage of every token, (B, T): the estimator's per-token advantages when it gives them (GAE,
    REINFORCE++), else each response's advantage on all its tokens, (B, 1) broadcast."""
    return batch.token_advantages if batch.token_advantages is not None else batch.advantages.unsqueeze(-1)


def token_ratio(batch: OnlineBatch) -> Tensor:
    """ρ_t = π_θ/π_old per token (the log-ratio clamped to ±20 before exp)."""
    return torch.exp((batch.logprobs - batch.old_logprobs).clamp(-kl.LOG_RATIO_LIMIT, kl.LOG_RATIO_LIMIT))


def clipped_surrogate(ratio: Tensor, advantages: Tensor, low: float, high: float, dual_clip: float = 0.0) -> Tensor:
    """The per-token PPO-clip loss −min(ρ·A, clip(ρ, low, high)·A); with dual clip c > 1, for A < 0 the loss is
    capped at −c·A, i.e. min(that, −c·A) (arXiv 1912.09729, as verl's ``clip_ratio_c``)."""
    loss = -torch.min(ratio * advantages, ratio.clamp(low, high) * advantages)
    if dual_clip:
        loss = torch.where(advantages < 0, torch.min(loss, -dual_clip * advantages), loss)
    return loss


def clip_fraction_mask(ratio: Tensor, advantages: Tensor, low: float, high: float) -> Tensor:
    """Tokens whose ratio left the clip range in the direction that clipping stops (no gradient)."""
    with torch.no_grad():
        return ((ratio < low) & (advantages < 0)) | ((ratio > high) & (advantages > 0))


def kl_term(batch: OnlineBatch, options: PolicyOptions, ratio: Tensor | None = None) -> Tensor | None:
    """β × the per-token KL estimate of ``options`` (× ``ratio`` with ``kl_bias_correction``), or None when β = 0."""
    if options.beta <= 0:
        return None
    if batch.ref_logprobs is None:
        raise ValueError("a KL penalty (beta > 0) needs reference log-probabilities")
    estimate = kl.ESTIMATORS[options.kl_estimator](batch.logprobs, batch.ref_logprobs)
    if options.kl_bias_correction:
        estimate = kl.bias_corrected(estimate, ratio if ratio is not None else token_ratio(batch))
    return options.beta * estimate


def reduce(per_token: Tensor, batch: OnlineBatch, options: PolicyOptions) -> Tensor:
    """``per_token`` reduced by the options' aggregation (docs/algorithms.md#aggregation)."""
    return aggregate(per_token, batch, options.aggregation, options.empty_responses)


TIS_MODES = ("truncate", "mask")


def truncated_is_weights(train_logprobs: Tensor, sampler_logprobs: Tensor, cap: float, mode: str = "truncate"
                         ) -> Tensor:
    """Per-token importance weights for the mismatch between the sampler's and the trainer's probabilities of the
    sampled tokens (docs/algorithms.md#truncated-importance-sampling), without gradient: w = min(π_train/π_sampler,
    C) (``truncate``), or 1 where C⁻¹ ≤ π_train/π_sampler ≤ C and 0 elsewhere (``mask``)."""
    with torch.no_grad():
        ratio = torch.exp((train_logprobs - sampler_logprobs).clamp(-kl.LOG_RATIO_LIMIT, kl.LOG_RATIO_LIMIT))
        if mode == "truncate":
            return ratio.clamp(max=cap)
        return ((ratio <= cap) & (ratio >= 1.0 / cap)).to(ratio.dtype)


def with_kl(policy: Tensor, batch: OnlineBatch, options: PolicyOptions, ratio: Tensor | None = None) -> Tensor:
    """The per-token loss: the policy term (weighted by the batch's truncated importance weights when it has them)
    plus the KL term when there is one."""
    if batch.is_weights is not None:
        policy = policy * batch.is_weights
    penalty = kl_term(batch, options, ratio)
    return policy if penalty is None else policy + penalty
