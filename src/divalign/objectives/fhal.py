"""f-HAL: the hybrid alignment loss of Haldar et al. (arXiv 2602.05946, research/algorithms.md §1.5).

    L = λ·L_FDO(off-policy preference data) + (1 − λ)·L_f-GRPO(on-policy samples)

The off-policy part is FDO (:mod:`divalign.objectives.unpaired`) on preference data read as unpaired responses:
chosen (or safe) responses sample D⁺, rejected (or harmful) ones D⁻. The on-policy part is f-GRPO
(:mod:`divalign.objectives.fgrpo`) on the step's sampled groups. Both use the same divergence, link and β unless
``preference_beta`` is set. λ = 0 is f-GRPO and λ = 1 is FDO exactly. The paper's Algorithm 1 mixes the two
gradients the same way, (1 − λ)·g_on + λ·g_off. As the reviewers note, the off-policy part gets no importance
correction; λ = 0.5 is the default the brief reports (not verified against the paper).

The loss function takes either part or both, so a trainer can run the on-policy micro-batches and the
preference batch in separate passes; the sum of those calls is the f-HAL loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from divalign.errors import UserError
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.fgrpo import FGRPOOptions, fgrpo_loss
from divalign.objectives.registry import register
from divalign.objectives.unpaired import FDOOptions, UnpairedBatch, fdo_loss


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
            raise UserError(f"fhal.mix must be in [0, 1] (got {self.mix})")
        self.fdo = FDOOptions(divergence=self.divergence, alpha=self.alpha, link=self.link,
                              beta=self.preference_beta or self.beta)


@register("fhal", family="hybrid", options=FHALOptions)
def fhal_loss(online: OnlineBatch | None, preference: UnpairedBatch | None, options: FHALOptions):
    loss, metrics = 0.0, {}
    if online is not None:
        on, on_metrics = fgrpo_loss(online, options)
        loss = loss + (1 - options.mix) * on
        metrics.update(on_metrics)
    if preference is not None:
        off, off_metrics = fdo_loss(preference, options.fdo, {})
        loss = loss + options.mix * off
        metrics.update({f"preference_{key}": value for key, value in off_metrics.items()})
    return loss, metrics
