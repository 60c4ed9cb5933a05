"""Objectives on unpaired desirable / undesirable responses: FDO (with the KLDO, BCO and HDO presets) and KTO.

Each takes an :class:`UnpairedBatch` of sequence log-probabilities with a desirability flag per response, the
options, and a small ``state`` dict (running averages of KLDO and BCO; empty for the others), and returns
``(loss, metrics)``. After the whole batch the trainer calls ``options.next_state(state, metrics)``. Averages
over each side divide by that side's count in the *whole* batch, so micro-batch losses add up — except for
KLDO, whose log-mean-exp and running average need the whole batch at once (``whole_batch_only``), and KTO,
whose reference point the trainer computes once per batch.

FDO (arXiv 2502.00657, §2): with r = β·log(π_θ/π_ref) and a link g into dom f*, minimise the negative
variational bound of D_f(D⁺ ‖ D⁻),

    L = −Ê⁺[g(r)] + Ê⁻[f*(g(r))],

for any catalog divergence and link (:mod:`divalign.divergences`). ``divergence_estimate`` is −L.
Presets (``preset``):

* ``kldo``: the Donsker–Varadhan form −Ê⁺[r] + log Ê⁻[eʳ] with the moving-average gradient of MINE: the value
  is the DV bound, the gradient of the second term is Ê⁻[eʳ∇r] / m with m an exponential moving average of
  Ê⁻[eʳ] (rate 0.1) that includes the current batch, m ← (1 − ρ)m + ρ·Ê⁻[eʳ]. The authors' code updates its
  average as ``track*(1-rate) + rate*track``, which never moves; this is the intended EMA. m is not reset per
  epoch (the code resets it); the code's optional ``normalize`` rescaling is not reproduced.
* ``bco``: JS canonical link shifted by δ: −Ê⁺[log σ(r − δ)] − Ê⁻[log σ(−(r − δ))], with δ an EMA (rate 0.1)
  of the batch-mean r over both sides, updated after each batch (again the intended EMA, not the code's).
* ``hdo``: squared Hellinger, canonical link: Ê⁺[e^(−r/2)] + Ê⁻[e^(r/2)] up to constants.

KTO (arXiv 2402.01306, as TRL implements it): z₀ = max(0, mean(log π_θ(y'|x) − log π_ref(y'|x))) over
mismatched pairs (x, y') of the whole batch, detached; loss λ_D(1 − σ(β(r − z₀))) on desirable and
λ_U(1 − σ(β(z₀ − r))) on undesirable responses, averaged over all responses. Without mismatched pairs z₀ = 0.
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
class UnpairedBatch:
    logps: Tensor  #: (B,) log π_θ(y|x), token sums
    ref_logps: Tensor  #: (B,)
    desirable: Tensor  #: (B,) bool
    num_desirable: int  #: in the whole accumulated batch
    num_undesirable: int
    kl_logps: Tensor | None = None  #: KTO: log π_θ(y'|x) on the whole batch's mismatched pairs
    ref_kl_logps: Tensor | None = None

    @property
    def log_ratio(self) -> Tensor:
        return self.logps - self.ref_logps


def _side_means(pos_terms: Tensor, neg_terms: Tensor, batch: UnpairedBatch) -> tuple[Tensor, Tensor]:
    """Σ over desirable / N⁺ and Σ over undesirable / N⁻ (0 when a side is empty in the whole batch)."""
    d = batch.desirable
    zero = pos_terms.new_zeros(())
    pos = torch.where(d, pos_terms, zero).sum() / batch.num_desirable if batch.num_desirable else zero
    neg = torch.where(~d, neg_terms, zero).sum() / batch.num_undesirable if batch.num_undesirable else zero
    return pos, neg


def _reward_metrics(r: Tensor, batch: UnpairedBatch) -> dict[str, float]:
    pos, neg = _side_means(r.detach(), r.detach(), batch)
    return {"reward_desirable": float(pos), "reward_undesirable": float(neg)}


PRESETS = {"kldo": ("kl", "canonical"), "bco": ("js", "canonical"), "hdo": ("hellinger", "canonical")}
EMA_RATE = 0.1


@dataclass
class FDOOptions:
    """Options of ``fdo``."""

    preset: str = "none"
    """kldo (Donsker-Varadhan KL with moving-average gradient), bco (shifted JS), hdo (Hellinger), or none."""
    divergence: str = "kl"
    """Catalog divergence when preset is none: kl, reverse_kl, pearson, hellinger, js, tv or alpha."""
    alpha: float = 0.5
    """Parameter of the alpha divergence."""
    link: str = "canonical"
    """canonical or fgan."""
    beta: float = 0.1
    """Scale of r = beta * log(pi/pi_ref)."""
    ema_rate: float = EMA_RATE
    """Rate of the running averages of kldo and bco."""

    def __post_init__(self):
        if self.preset != "none" and self.preset not in PRESETS:
            raise UserError(f"fdo.preset: expected none or one of {', '.join(PRESETS)} (got '{self.preset}')")
        if self.preset in PRESETS:
            self.divergence, self.link = PRESETS[self.preset]
        if not self.beta > 0:
            raise UserError(f"fdo.beta must be > 0 (got {self.beta})")
        if not 0 < self.ema_rate <= 1:
            raise UserError("fdo.ema_rate must be in (0, 1]")
        self.link_fn = divergences.by_name(self.divergence, self.alpha).link(self.link)

    @property
    def whole_batch_only(self) -> bool:
        return self.preset == "kldo"

    def next_state(self, state: dict, metrics: dict) -> dict:
        """Fold the whole batch's statistics into the running averages."""
        if self.preset == "kldo" and "undesirable_mean_exp" in metrics:
            return {"ema": _ema(state.get("ema"), metrics["undesirable_mean_exp"], self.ema_rate)}
        if self.preset == "bco" and "reward_mean" in metrics:
            return {"delta": _ema(state.get("delta"), metrics["reward_mean"], self.ema_rate)}
        return state


def _ema(previous: float | None, value: float, rate: float) -> float:
    return value if previous is None else (1 - rate) * previous + rate * value


@register("fdo", family="unpaired", options=FDOOptions)
def fdo_loss(batch: UnpairedBatch, options: FDOOptions, state: dict):
    r = options.beta * batch.log_ratio
    metrics = _reward_metrics(r, batch)
    if options.preset == "kldo":
        # Value: the DV bound. Gradient of the negative side: Σ eʳ∇r / (N⁻ · m) with m the running average.
        exp_r = divergences.safe_exp(r)
        pos, neg_sum_exp = _side_means(r, exp_r, batch)
        mean_exp = float(neg_sum_exp.detach())
        metrics["undesirable_mean_exp"] = mean_exp
        m = _ema(state.get("ema"), mean_exp, options.ema_rate) if batch.num_undesirable else 1.0
        value = math.log(max(mean_exp, 1e-30)) if batch.num_undesirable else 0.0
        neg = value + (neg_sum_exp - neg_sum_exp.detach()) / (m + 1e-6)
        loss = -pos + neg
    elif options.preset == "bco":
        delta = state.get("delta", 0.0)
        pos, neg = _side_means(-F.logsigmoid(r - delta), -F.logsigmoid(-(r - delta)), batch)
        loss = pos + neg
        metrics["reward_mean"] = float(r.detach().sum()) / (batch.num_desirable + batch.num_undesirable)
        metrics["delta"] = delta * len(r) / (batch.num_desirable + batch.num_undesirable)
    else:
        pos, neg = _side_means(-options.link_fn.g(r), options.link_fn.conjugate_of_g(r), batch)
        loss = pos + neg
    metrics["divergence_estimate"] = -float(loss.detach())
    return loss, metrics


@dataclass
class KTOOptions:
    """Options of ``kto``."""

    beta: float = 0.1
    """Inverse temperature of the implicit reward."""
    desirable_weight: float = 1.0
    """lambda_D."""
    undesirable_weight: float = 1.0
    """lambda_U."""

    def __post_init__(self):
        if not self.beta > 0:
            raise UserError(f"kto.beta must be > 0 (got {self.beta})")

    whole_batch_only = False

    def next_state(self, state: dict, metrics: dict) -> dict:
        return state


@register("kto", family="unpaired", options=KTOOptions)
def kto_loss(batch: UnpairedBatch, options: KTOOptions, state: dict):
    z0 = torch.zeros((), dtype=batch.logps.dtype, device=batch.logps.device)
    if batch.kl_logps is not None:
        z0 = (batch.kl_logps - batch.ref_kl_logps).mean().detach().clamp(min=0)
    r = batch.log_ratio
    desirable = options.desirable_weight * (1 - torch.sigmoid(options.beta * (r - z0)))
    undesirable = options.undesirable_weight * (1 - torch.sigmoid(options.beta * (z0 - r)))
    per_item = torch.where(batch.desirable, desirable, undesirable)
    loss = per_item.sum() / (batch.num_desirable + batch.num_undesirable)
    metrics = _reward_metrics(options.beta * r, batch)
    metrics["kl_reference_point"] = float(z0) * len(r) / (batch.num_desirable + batch.num_undesirable)
    return loss, metrics
