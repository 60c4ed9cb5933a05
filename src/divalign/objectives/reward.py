"""The reward-model objective: Bradley–Terry on scalar scores of (chosen, rejected) pairs.

    L = −log σ(r(x, y_w) − r(x, y_l) − m) + c·(r(x, y_w) + r(x, y_l))²

Bradley–Terry pairwise loss as used for RLHF reward models (InstructGPT, arXiv 2203.02155, Eq. 1), with the
optional margin m and centering coefficient c of TRL's ``RewardTrainer`` (docs/algorithms.md#bradley-terry). The
mean is over the *whole* batch (``num_pairs``), so micro-batch losses add up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from divalign.objectives.registry import register


@dataclass
class BradleyTerryOptions:
    """Options of ``bradley_terry``."""

    margin: float = 0.0
    """Margin m required between chosen and rejected scores."""
    center: float = 0.0
    """Weight c of the centering term (r_w + r_l)^2, which keeps scores near 0."""


@register("bradley_terry", family="reward", options=BradleyTerryOptions)
def bradley_terry(chosen: Tensor, rejected: Tensor, options: BradleyTerryOptions, num_pairs: int | None = None):
    per_pair = -F.logsigmoid(chosen - rejected - options.margin)
    if options.center:
        per_pair = per_pair + options.center * (chosen + rejected) ** 2
    n = num_pairs or len(per_pair)
    metrics = {
        "accuracy": float((chosen > rejected).sum()) / n,
        "margin": float((chosen - rejected).detach().sum()) / n,
    }
    return per_pair.sum() / n, metrics
