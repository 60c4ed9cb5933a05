"""REINFORCE++ and REINFORCE++-baseline (Hu et al., arXiv 2501.03262; docs/algorithms.md#reinforce): PPO's clipped
surrogate on per-token advantages from the ``reinforce_pp`` / ``reinforce_pp_baseline`` estimators (reward-to-go
with the token KL to the reference in the reward, whitened over the global batch), without a value head:

    ℓ_{i,t} = −min(ρ_{i,t}·A_{i,t}, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high)·A_{i,t}),   reduced by ``token_mean``.

The KL enters the reward (``kl_coef`` × the ``kl_estimator`` of log π_old against log π_ref, k1 by default as the
paper and OpenRLHF), not the loss. ``reinforce_pp_baseline`` is the paper's variant for reasoning tasks: each
prompt's mean reward is subtracted before the returns; there the paper (and verl) put the KL in the loss instead
(k3 with ``beta``), which ``beta`` > 0 gives here, with ``kl_coef`` 0.

Choices: ε = 0.2 both ways, kl_coef 0.01 for ``reinforce_pp`` (OpenRLHF's ``init_kl_coef``), β 0.001 for the
baseline variant (the ``kl_loss_coef`` of verl's GRPO examples), dual clip off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from divalign.advantages.reinforce_pp import ReturnsOptions
from divalign.objectives import kl
from divalign.objectives.grpo import grpo_loss
from divalign.objectives.interface import KLPenalty
from divalign.objectives.policy import ClipOptions
from divalign.objectives.registry import register


@dataclass
class ReinforcePPOptions(ClipOptions, ReturnsOptions):
    """Options of ``reinforce_pp``."""

    beta: float = 0.0
    """Weight of a KL term in the loss (the paper puts the KL in the reward instead: kl_coef)."""
    kl_coef: float = 0.01
    """Weight of the per-token KL penalty folded into the reward (0: none)."""
    reward_kl_estimator: str = "k1"
    """Per-token KL estimate in the reward: k1 (the paper), k2, k3 or abs."""
    aggregation: str = "token_mean"
    """Token-level mean over the batch."""

    advantage: ClassVar[str] = "reinforce_pp"
    own_estimator_only: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        ReturnsOptions.__post_init__(self)
        kl.check_estimator(self.reward_kl_estimator, "reward_kl_estimator")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0 (got {self.kl_coef})")

    def needs_reference(self) -> bool:
        return self.beta > 0 or self.kl_coef > 0

    def kl_penalty(self) -> KLPenalty | None:
        return KLPenalty(self.kl_coef, self.reward_kl_estimator) if self.kl_coef > 0 else None


@dataclass
class ReinforcePPBaselineOptions(ReinforcePPOptions):
    """Options of ``reinforce_pp_baseline``."""

    beta: float = 0.001
    """Weight of the KL term in the loss (the kl_loss_coef of verl's GRPO examples)."""
    kl_coef: float = 0.0
    """Weight of a per-token KL penalty folded into the reward (off: the KL is in the loss)."""

    advantage: ClassVar[str] = "reinforce_pp_baseline"


# the loss is GRPO's clipped surrogate, which reads the estimator's per-token advantages
register("reinforce_pp", family="online", options=ReinforcePPOptions)(grpo_loss)
register("reinforce_pp_baseline", family="online", options=ReinforcePPBaselineOptions)(grpo_loss)
