"""f-DPO (Wang et al., arXiv 2309.16240; docs/algorithms.md#f-dpo): DPO with an f-divergence regulariser.

    ℓ = −log σ(β·f'(e^{Δ_w}) − β·f'(e^{Δ_l})),   Δ = log π_θ(y|x) − log π_ref(y|x),

for the regulariser D_f(π_θ ‖ π_ref). ``regularizer`` names it as the f-DPO paper and TRL do, by the direction
of the KL it generalises: ``reverse_kl`` KL(π_θ ‖ π_ref), f(u) = u ln u (the catalog's ``kl``: DPO exactly);
``forward_kl`` KL(π_ref ‖ π_θ), f(u) = −ln u (the catalog's ``reverse_kl``: f'(u) = −1/u); ``js``; ``alpha``.
Those names describe the regulariser, so they are not the catalog names of :mod:`divalign.divergences`, and the
option is not called ``divergence`` (which everywhere else takes catalog names). Constants in f' cancel in the
difference. α follows the catalog and TRL: f'(u) = (u^(α−1) − 1)/(α − 1); the f-DPO paper's α is 1 − this α
(they agree at 0.5). Exponentials use the catalog's safe_exp (exact up to exponent 30); TRL clamps the exponent
at 80 instead, so the two agree for |(α − 1)Δ| ≤ 30.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from divalign import divergences
from divalign.objectives.batch import PairBatch
from divalign.objectives.dpo import check_beta
from divalign.objectives.registry import register

#: f-DPO regulariser names → catalog generator names.
REGULARIZERS = {"reverse_kl": "kl", "forward_kl": "reverse_kl", "js": "js", "alpha": "alpha"}


@dataclass
class FDPOOptions:
    """Options of ``fdpo``."""

    regularizer: str = "js"
    """Regulariser D_f(pi || pi_ref): reverse_kl (KL(pi || pi_ref), = DPO), forward_kl (KL(pi_ref || pi)), js or
    alpha."""
    alpha: float = 0.5
    """alpha of the alpha-divergence, f'(u) = (u^(alpha-1) - 1)/(alpha - 1) (TRL's convention)."""
    beta: float = 0.1
    """Inverse temperature."""

    def __post_init__(self):
        check_beta(self.beta, "fdpo")
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"fdpo.regularizer: expected one of {', '.join(REGULARIZERS)} (got '{self.regularizer}')")
        self.f_prime_of_exp = divergences.by_name(REGULARIZERS[self.regularizer], self.alpha).canonical


@register("fdpo", family="pairs", options=FDPOOptions)
def fdpo_loss(batch: PairBatch, options: FDPOOptions):
    g = options.f_prime_of_exp
    logits = options.beta * (g(batch.chosen_ratio) - g(batch.rejected_ratio))
    return batch.mean(-F.logsigmoid(logits)), batch.metrics(options.beta, logits)
