"""Pairwise preference objectives: DPO, IPO, f-DPO and f-PO on (chosen, rejected) pairs.

All take a :class:`PairBatch` of sequence log-probabilities (token sums over the completion) under the policy
and the reference, and return the mean over the *whole* batch (``num_pairs``), so micro-batch losses add up.
With Δ = log π_θ(y|x) − log π_ref(y|x):

* ``dpo`` (arXiv 2305.18290): −log σ(β(Δ_w − Δ_l)), optionally with conservative label smoothing ε (cDPO):
  −(1 − ε) log σ(βh) − ε log σ(−βh).
* ``ipo`` (arXiv 2310.12036): (Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))². Each log-ratio is divided by its completion
  length, as TRL does (a choice its authors confirmed with the IPO authors; the paper uses sums), so β plays
  the role of τ.
* ``fdpo`` (arXiv 2309.16240): −log σ(β f'(e^{Δ_w}) − β f'(e^{Δ_l})) for the regulariser D_f(π_θ ‖ π_ref).
  ``divergence`` uses the f-DPO paper's names, which refer to the regulariser, not to the catalog's f:
  ``reverse_kl`` (f = u ln u, the catalog's ``kl``: DPO exactly), ``forward_kl`` (f = −ln u, the catalog's
  ``reverse_kl``: f' = −1/u), ``js`` and ``alpha``. Constants in f' cancel in the difference. α follows the
  catalog and TRL: f'(u) = (u^(α−1) − 1)/(α − 1); the f-DPO paper's α is 1 − this α (they agree at 0.5).
  Exponentials use the catalog's safe_exp (exact up to exponent 30); TRL clamps the exponent at 80 instead,
  so the two agree for |(α − 1)Δ| ≤ 30.
* ``fpo`` (arXiv 2410.21662, the authors' ``fpo_loss`` in its pairwise "pref" setting): with
  q = softmax(β·(Δ_w, Δ_l)) and the target p = softmax(0, −10) (the code's log p = (0, −10), normalised here,
  a change of 5·10⁻⁵ in p), minimise D(q, p): ``alpha`` Σ p·(u^(1−α) − (1 − α)u − α)/(α(α − 1)) with
  u = q/p; ``js`` ½KL(q‖m) + ½KL(p‖m), m = (q + p)/2 (equal to the code's expanded form); ``hellinger``
  Σ(√q − √p)²; ``jeffreys`` Σ(q − p)(log q − log p). α → 1 recovers a DPO-like KL(p‖q).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divalign import divergences
from divalign.errors import UserError
from divalign.objectives.registry import register


@dataclass
class PairBatch:
    chosen_logps: Tensor  #: (B,) log π_θ(y_w | x), token sums
    rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor  #: (B,) completion token counts
    rejected_lengths: Tensor
    num_pairs: int  #: pairs in the whole accumulated batch

    @property
    def chosen_ratio(self) -> Tensor:
        return self.chosen_logps - self.ref_chosen_logps

    @property
    def rejected_ratio(self) -> Tensor:
        return self.rejected_logps - self.ref_rejected_logps


def _mean(per_pair: Tensor, batch: PairBatch) -> Tensor:
    return per_pair.sum() / batch.num_pairs


def _share(values: Tensor, batch: PairBatch) -> float:
    return float(values.detach().sum().item()) / batch.num_pairs


def _pair_metrics(batch: PairBatch, beta: float, margin: Tensor) -> dict[str, float]:
    """Implicit rewards β·Δ, their margin and the accuracy (chosen rewarded above rejected); all additive."""
    return {
        "reward_chosen": _share(beta * batch.chosen_ratio, batch),
        "reward_rejected": _share(beta * batch.rejected_ratio, batch),
        "reward_margin": _share(margin, batch),
        "reward_accuracy": _share((margin > 0).float(), batch),
    }


def _check_beta(beta: float, name: str) -> None:
    if not beta > 0:
        raise UserError(f"{name}.beta must be > 0 (got {beta})")


@dataclass
class DPOOptions:
    """Options of ``dpo``."""

    beta: float = 0.1
    """Inverse temperature of the implicit reward beta * log(pi/pi_ref)."""
    label_smoothing: float = 0.0
    """cDPO: assumed probability that a preference label is flipped (0 for plain DPO)."""

    def __post_init__(self):
        _check_beta(self.beta, "dpo")
        if not 0 <= self.label_smoothing < 0.5:
            raise UserError("dpo.label_smoothing must be in [0, 0.5)")


@register("dpo", family="pairs", options=DPOOptions)
def dpo_loss(batch: PairBatch, options: DPOOptions):
    logits = options.beta * (batch.chosen_ratio - batch.rejected_ratio)
    eps = options.label_smoothing
    per_pair = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return _mean(per_pair, batch), _pair_metrics(batch, options.beta, logits)


@dataclass
class IPOOptions:
    """Options of ``ipo``."""

    beta: float = 0.1
    """The regularisation tau of IPO: the target margin of length-normalised log-ratios is 1/(2*beta)."""

    def __post_init__(self):
        _check_beta(self.beta, "ipo")


@register("ipo", family="pairs", options=IPOOptions)
def ipo_loss(batch: PairBatch, options: IPOOptions):
    h = batch.chosen_ratio / batch.chosen_lengths.clamp(min=1) - batch.rejected_ratio / batch.rejected_lengths.clamp(
        min=1
    )
    per_pair = (h - 1.0 / (2.0 * options.beta)) ** 2
    return _mean(per_pair, batch), _pair_metrics(batch, options.beta, h)


#: f-DPO regulariser names → catalog generator names.
FDPO_DIVERGENCES = {"reverse_kl": "kl", "forward_kl": "reverse_kl", "js": "js", "alpha": "alpha"}


@dataclass
class FDPOOptions:
    """Options of ``fdpo``."""

    divergence: str = "js"
    """Regulariser D_f(pi || pi_ref): reverse_kl (= DPO), forward_kl, js or alpha."""
    alpha: float = 0.5
    """alpha of the alpha-divergence, f'(u) = (u^(alpha-1) - 1)/(alpha - 1) (TRL's convention)."""
    beta: float = 0.1
    """Inverse temperature."""

    def __post_init__(self):
        _check_beta(self.beta, "fdpo")
        if self.divergence not in FDPO_DIVERGENCES:
            raise UserError(f"fdpo.divergence: expected one of {', '.join(FDPO_DIVERGENCES)} (got '{self.divergence}')")
        self.f_prime_of_exp = divergences.by_name(FDPO_DIVERGENCES[self.divergence], self.alpha).canonical


@register("fdpo", family="pairs", options=FDPOOptions)
def fdpo_loss(batch: PairBatch, options: FDPOOptions):
    g = options.f_prime_of_exp
    logits = options.beta * (g(batch.chosen_ratio) - g(batch.rejected_ratio))
    return _mean(-F.logsigmoid(logits), batch), _pair_metrics(batch, options.beta, logits)


FPO_DIVERGENCES = ("alpha", "js", "hellinger", "jeffreys")
#: log p of the pairwise target before normalisation (the authors' code).
FPO_TARGET_LOGITS = (0.0, -10.0)


@dataclass
class FPOOptions:
    """Options of ``fpo``."""

    divergence: str = "alpha"
    """D(q, p) between the model's and the target pair distributions: alpha, js, hellinger or jeffreys."""
    alpha: float = 0.5
    """alpha of the alpha-divergence (alpha -> 1: DPO-like, alpha -> 0: EXO-like)."""
    beta: float = 0.1
    """Temperature of q = softmax(beta * (Delta_w, Delta_l))."""

    def __post_init__(self):
        _check_beta(self.beta, "fpo")
        if self.divergence not in FPO_DIVERGENCES:
            raise UserError(f"fpo.divergence: expected one of {', '.join(FPO_DIVERGENCES)} (got '{self.divergence}')")
        if self.divergence == "alpha" and self.alpha in (0.0, 1.0):
            raise UserError("fpo.alpha must not be 0 or 1")


def fpo_divergence(log_q: Tensor, log_p: Tensor, name: str, alpha: float) -> Tensor:
    """D(q, p) summed over the last dimension (candidates), from log-probabilities."""
    q, p = log_q.exp(), log_p.exp()
    if name == "alpha":
        u = q / p
        return (p * (u ** (1 - alpha) - (1 - alpha) * u - alpha)).sum(-1) / (alpha * (alpha - 1))
    if name == "js":
        log_m = torch.logsumexp(torch.stack([log_q, log_p]), dim=0) - math.log(2.0)
        return 0.5 * (q * (log_q - log_m)).sum(-1) + 0.5 * (p * (log_p - log_m)).sum(-1)
    if name == "hellinger":
        return ((q.sqrt() - p.sqrt()) ** 2).sum(-1)
    return ((q - p) * (log_q - log_p)).sum(-1)  # jeffreys


@register("fpo", family="pairs", options=FPOOptions)
def fpo_loss(batch: PairBatch, options: FPOOptions):
    scores = options.beta * torch.stack([batch.chosen_ratio, batch.rejected_ratio], dim=-1)
    log_q = torch.log_softmax(scores, dim=-1)
    log_p = torch.log_softmax(torch.tensor(FPO_TARGET_LOGITS, dtype=scores.dtype, device=scores.device), -1)
    per_pair = fpo_divergence(log_q, log_p.expand_as(log_q), options.divergence, options.alpha)
    margin = scores[..., 0] - scores[..., 1]
    return _mean(per_pair, batch), _pair_metrics(batch, options.beta, margin)
