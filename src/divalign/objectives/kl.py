"""Per-token estimators of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman, "Approximating KL divergence";
docs/algorithms.md#kl-estimators)."""

from __future__ import annotations

import torch
from torch import Tensor

#: verl's clamps: the log-ratio to ±20 before exp, the k3 value to ±10 — keeps loss and gradient finite.
LOG_RATIO_LIMIT = 20.0
K3_LIMIT = 10.0


def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = e^δ − δ − 1 with δ = log π_ref − log π_θ: unbiased on-policy, non-negative, low variance."""
    delta = (ref_logprobs - logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return (torch.exp(delta) - delta - 1.0).clamp(-K3_LIMIT, K3_LIMIT)


def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log π_θ − log π_ref: unbiased on-policy, can be negative."""
    return logprobs - ref_logprobs


#: By name, as objectives' options select them.
ESTIMATORS = {"k1": k1, "k3": k3}
