"""IPO (Azar et al., arXiv 2310.12036; docs/algorithms.md#ipo) with TRL's length normalisation.

    ℓ = (Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))²,   Δ = log π_θ(y|x) − log π_ref(y|x).

Each log-ratio is divided by its completion length, as TRL does (a choice its authors confirmed with the IPO
authors; the paper uses sums), so β plays the role of the paper's τ.
"""

from __future__ import annotations

from dataclasses import dataclass

from divalign.objectives.batch import PairBatch
from divalign.objectives.dpo import check_beta
from divalign.objectives.registry import register


@dataclass
class IPOOptions:
    """Options of ``ipo``."""

    beta: float = 0.1
    """The regularisation tau of IPO: the target margin of length-normalised log-ratios is 1/(2*beta)."""

    def __post_init__(self):
        check_beta(self.beta, "ipo")


@register("ipo", family="pairs", options=IPOOptions)
def ipo_loss(batch: PairBatch, options: IPOOptions):
    h = batch.chosen_ratio / batch.chosen_lengths.clamp(min=1) - batch.rejected_ratio / batch.rejected_lengths.clamp(
        min=1
    )
    per_pair = (h - 1.0 / (2.0 * options.beta)) ** 2
    return batch.mean(per_pair), batch.metrics(options.beta, h)
