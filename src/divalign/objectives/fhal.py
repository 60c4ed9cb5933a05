"""f-HAL: the hybrid alignment loss of Haldar et al. (arXiv 2602.05946; docs/algorithms.md#f-hal).

    L = λ·L_FDO(off-policy preference data) + (1 − λ)·L_f-GRPO(on-policy samples)

The off-policy part is FDO (:mod:`divalign.objectives.fdo`) on preference data read as unpaired responses:
chosen (or safe) responses sample D⁺, rejected (or harmful) ones D⁻. The on-policy part is f-GRPO
(:mod:`divalign.objectives.fgrpo`) on the step's sampled groups. Both use the same divergence, link and β unless
``preference_beta`` is set. λ = 0 is f-GRPO and λ = 1 is FDO exactly; the gradients mix the same way,
(1 − λ)·g_on + λ·g_off. The off-policy part gets no importance correction for the policy that wrote the
preference data. The default λ = 0.5 weighs the two parts equally.

The two parts are two registered functions: :func:`fhal_loss` on the sampled batch and :func:`fhal_preference_loss`
on a preference batch, so a trainer runs them in their own passes; their sum is the f-HAL loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from divalign.objectives.batch import OnlineBatch, UnpairedBatch
from divalign.objectives.fdo import FDOOptions, fdo_loss
from divalign.objectives.fgrpo import FGRPOOptions, fgrpo_loss
from divalign.objectives.registry import register


@dataclass
class FHALOptions(FGRPOOptions):
    """Options of ``fhal``: f-GRPO's options for both parts, plus the mixing weight."""

    mix: float = 0.5
    """lambda: weight of the off-policy FDO part (0: f-GRPO, 1: FDO)."""
    preference_beta: float = 0.0
    """beta of the FDO part (0: the same beta as the on-policy part)."""
    fdo: FDOOptions = field(init=False)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.mix <= 1:
            raise ValueError(f"fhal.mix must be in [0, 1] (got {self.mix})")
        self.fdo = FDOOptions(divergence=self.divergence, alpha=self.alpha, link=self.link,
                              beta=self.preference_beta or self.beta)


def fhal_preference_loss(preference: UnpairedBatch, options: FHALOptions):
    """λ·L_FDO on a preference batch; metrics are prefixed ``preference_``."""
    loss, metrics = fdo_loss(preference, options.fdo, {})
    return options.mix * loss, {f"preference_{key}": value for key, value in metrics.items()}


@register("fhal", family="online", options=FHALOptions, preference_loss=fhal_preference_loss)
def fhal_loss(online: OnlineBatch, options: FHALOptions):
    """(1 − λ)·L_f-GRPO on the sampled batch."""
    loss, metrics = fgrpo_loss(online, options)
    return (1 - options.mix) * loss, metrics
