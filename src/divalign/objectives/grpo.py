"""GRPO, Dr. GRPO and DAPO: one clipped-surrogate objective with three sets of defaults (docs/algorithms.md#grpo,
docs/algorithms.md#dr-grpo, docs/algorithms.md#dapo).

Per token (arXiv 2402.03300, Eq. 3 with the k3 KL estimator):

    ℓ_{i,t} = −min(ρ_{i,t}·A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high)·A_i) + β·k3_{i,t},
    ρ_{i,t} = π_θ(y_{i,t}|·) / π_old(y_{i,t}|·),   k3 = π_ref/π_θ − log(π_ref/π_θ) − 1,

reduced by ``aggregation``: ``seq_mean_token_mean`` (GRPO), ``token_mean`` (DAPO, arXiv 2503.14476) or
``seq_mean_token_sum_norm`` (Dr. GRPO, arXiv 2503.20783). ε_high > ε_low is DAPO's clip-higher.

Choices:
* The log-ratio log ρ is clamped to ±20 before ``exp`` and k3 to ±10 (verl's clamps) so that loss and gradient
  stay finite for any input; inside those bounds the formula is exact.
* With one update per batch the behaviour log-probabilities from sampling serve as π_old, so ρ = 1 in value
  and only its gradient matters (no extra forward pass).
* The KL term is added per token inside the aggregation, as in the paper and TRL. ``kl_estimator`` picks
  another estimate than k3 and ``kl_bias_correction`` multiplies it by ρ (TRL 1.16's default; off here, as in
  the paper); ``dual_clip`` caps the loss of negative advantages (:mod:`divalign.objectives.policy`).
* With per-token advantages from the estimator (REINFORCE++) ρ·A is taken per token.

Presets (registered names sharing :func:`grpo_loss`):

* ``dr_grpo``: advantages r_i − mean(r) without the std division, token sums over the constant
  responses × completion budget, no KL term.
* ``dapo``: clip-higher (ε_low 0.2, ε_high 0.28), token-level mean, no KL term, and the rollout pieces of DAPO
  switched on (:meth:`DAPOOptions.rollout_plan`): dynamic sampling, truncated completions masked out of the
  loss, and the soft overlong punishment added to the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from divalign.objectives.aggregation import token_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.interface import RolloutPlan
from divalign.objectives.policy import (
    ClipOptions,
    clip_fraction_mask,
    clipped_surrogate,
    reduce,
    token_advantages,
    token_ratio,
    with_kl,
)
from divalign.objectives.registry import register


@dataclass
class GRPOOptions(ClipOptions):
    """Options of the ``grpo`` objective."""

    beta: float = 0.04
    """Weight of the KL penalty to the reference policy (0 disables it and the reference model)."""

    advantage: ClassVar[str] = "group"


@register("grpo", family="online", options=GRPOOptions)
def grpo_loss(batch: OnlineBatch, options: GRPOOptions):
    ratio = token_ratio(batch)
    adv = token_advantages(batch)
    low, high = 1.0 - options.epsilon_low, 1.0 + options.epsilon_high
    policy = clipped_surrogate(ratio, adv, low, high, options.dual_clip)
    metrics = {
        "policy_loss": float(reduce(policy.detach(), batch, options).item()),
        "clip_fraction": token_share(clip_fraction_mask(ratio, adv, low, high).float(), batch),
    }
    return reduce(with_kl(policy, batch, options, ratio), batch, options), metrics


@dataclass
class DrGRPOOptions(GRPOOptions):
    """Options of the ``dr_grpo`` preset (GRPO options with Dr. GRPO's defaults)."""

    beta: float = 0.0
    """Weight of the KL penalty (Dr. GRPO uses none)."""
    aggregation: str = "seq_mean_token_sum_norm"
    """Token sums over a constant: responses x completion budget."""

    advantage: ClassVar[str] = "group_mean"


@dataclass
class DAPOOptions(GRPOOptions):
    """Options of the ``dapo`` preset (GRPO options with DAPO's defaults and its trainer-side pieces)."""

    epsilon_high: float = 0.28
    """Clip-higher: rho is clipped above at 1 + 0.28."""
    beta: float = 0.0
    """Weight of the KL penalty (DAPO uses none)."""
    aggregation: str = "token_mean"
    """Token-level mean over the batch."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal and sample more prompts until the batch is full."""
    max_sampling_rounds: int = 4
    """Sampling rounds per step for dynamic sampling (the batch may stay short after the last)."""
    mask_truncated: bool = True
    """Leave completions that hit the token budget out of the loss."""
    overlong_buffer: int = -1
    """Soft overlong punishment over the last this many tokens of the budget (-1: a fifth of it, 0: off)."""
    overlong_factor: float = 1.0
    """Penalty at the budget."""

    def rollout_plan(self) -> RolloutPlan:
        return RolloutPlan(dynamic_sampling=self.dynamic_sampling, max_sampling_rounds=self.max_sampling_rounds,
                           mask_truncated=self.mask_truncated, overlong_buffer=self.overlong_buffer,
                           overlong_factor=self.overlong_factor)


register("dr_grpo", family="online", options=DrGRPOOptions)(grpo_loss)
register("dapo", family="online", options=DAPOOptions)(grpo_loss)
