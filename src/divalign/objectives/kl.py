"""Per-token estimators of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman, "Approximating KL divergence";
docs/algorithms.md#kl-estimators), by the names objectives' options select them.

With δ = log π_ref − log π_θ at a sampled token (r = e^δ = π_ref/π_θ):

* ``k1`` = −δ: unbiased, can be negative, high variance; as a loss on samples of π_θ its expected gradient is 0.
* ``k2`` = ½·δ²: biased, non-negative, low variance; as a loss its expected gradient is that of KL(π_θ ‖ π_ref)
  (verl "mse").
* ``k3`` = r − 1 − δ: unbiased and non-negative (GRPO, TRL, verl "low_var_kl"); as a loss its expected gradient
  is that of the reverse direction, KL(π_ref ‖ π_θ).
* ``abs`` = |δ| (verl).
* ``k1+`` and ``k3+``: the value of k1 / k3 with the gradient of k2 (straight-through: k2 + stopgrad(k − k2)), as
  verl offers them: the value stays the unbiased estimate while the gradient is that of KL(π_θ ‖ π_ref).

:func:`bias_corrected` is TRL 1.16's ``use_bias_correction_kl``: the estimate multiplied by the importance ratio
π_θ/π_old (with gradient), which makes the estimate unbiased when the samples come from π_old.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: verl's clamps: the log-ratio to ±20 before exp, the k3 value to ±10 — keeps loss and gradient finite.
LOG_RATIO_LIMIT = 20.0
K3_LIMIT = 10.0


def _delta(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return (ref_logprobs - logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)


def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log π_θ − log π_ref: unbiased on-policy, can be negative (not clamped)."""
    return logprobs - ref_logprobs


def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ½·(log π_θ − log π_ref)²."""
    return 0.5 * _delta(logprobs, ref_logprobs) ** 2


def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = e^δ − δ − 1 with δ = log π_ref − log π_θ: unbiased on-policy, non-negative, low variance."""
    delta = _delta(logprobs, ref_logprobs)
    return (torch.exp(delta) - delta - 1.0).clamp(-K3_LIMIT, K3_LIMIT)


def absolute(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """|log π_θ − log π_ref|."""
    return (logprobs - ref_logprobs).abs()


def _straight_through(estimate: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def value_of_estimate_gradient_of_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
        quadratic = k2(logprobs, ref_logprobs)
        return quadratic + (estimate(logprobs, ref_logprobs) - quadratic).detach()

    return value_of_estimate_gradient_of_k2


#: By name, as objectives' options select them.
ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": k1, "k2": k2, "k3": k3, "abs": absolute, "k1+": _straight_through(k1), "k3+": _straight_through(k3),
}


def check_estimator(name: str, where: str) -> None:
    if name not in ESTIMATORS:
        raise ValueError(f"{where}: expected one of {', '.join(ESTIMATORS)} (got '{name}')")


def bias_corrected(estimate: Tensor, ratio: Tensor) -> Tensor:
    """``estimate`` × the importance ratio π_θ/π_old the loss uses (token or sequence level), with its gradient
    (TRL's ``use_bias_correction_kl``)."""
    return estimate * ratio
