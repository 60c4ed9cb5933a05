"""FDO: f-divergence optimisation on unpaired desirable / undesirable responses, with the KLDO, BCO and HDO presets
(Haldar et al., arXiv 2502.00657; docs/algorithms.md#fdo).

With r = β·log(π_θ/π_ref) (token sums) and a link g into dom f*, minimise the negative variational bound of
D_f(D⁺ ‖ D⁻),

    L = −Ê⁺[g(r)] + Ê⁻[f*(g(r))],

for any catalog divergence and link (:mod:`divalign.divergences`). ``divergence_estimate`` is −L. Averages over
each side divide by that side's count in the *whole* batch, so micro-batch losses add up (KLDO excepted, below).
Presets (``preset``):

* ``kldo``: the Donsker–Varadhan form −Ê⁺[r] + log Ê⁻[eʳ] with the moving-average gradient of MINE: the value
  is the DV bound, the gradient of the second term is Ê⁻[eʳ∇r] / m with m an exponential moving average of
  Ê⁻[eʳ] (rate 0.1) that includes the current batch, m ← (1 − ρ)m + ρ·Ê⁻[eʳ]. The authors' code updates its
  average as ``track*(1-rate) + rate*track``, which never moves; this is the intended EMA. m is not reset per
  epoch (the code resets it); the code's optional ``normalize`` rescaling is not reproduced. The log-mean-exp
  and the average need the whole batch in one pass (``whole_batch_only``).
* ``bco``: JS canonical link shifted by δ: −Ê⁺[log σ(r − δ)] − Ê⁻[log σ(−(r − δ))], with δ an EMA (rate 0.1)
  of the batch-mean r over both sides, updated after each batch (again the intended EMA, not the code's).
* ``hdo``: squared Hellinger, canonical link: Ê⁺[e^(−r/2)] + Ê⁻[e^(r/2)] up to constants.

The running averages are the ``state`` the trainer keeps between batches (:meth:`FDOOptions.next_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F

from divalign import divergences
from divalign.objectives.batch import UnpairedBatch
from divalign.objectives.interface import UnpairedOptions
from divalign.objectives.registry import register

PRESETS = {"kldo": ("kl", "canonical"), "bco": ("js", "canonical"), "hdo": ("hellinger", "canonical")}
EMA_RATE = 0.1


@dataclass
class FDOOptions(UnpairedOptions):
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
            raise ValueError(f"fdo.preset: expected none or one of {', '.join(PRESETS)} (got '{self.preset}')")
        if self.preset in PRESETS:
            self.divergence, self.link = PRESETS[self.preset]
        if not self.beta > 0:
            raise ValueError(f"fdo.beta must be > 0 (got {self.beta})")
        if not 0 < self.ema_rate <= 1:
            raise ValueError("fdo.ema_rate must be in (0, 1]")
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
    metrics = batch.reward_metrics(r)
    if options.preset == "kldo":
        # Value: the DV bound. Gradient of the negative side: Σ eʳ∇r / (N⁻ · m) with m the running average.
        exp_r = divergences.safe_exp(r)
        pos, neg_sum_exp = batch.side_means(r, exp_r)
        mean_exp = float(neg_sum_exp.detach())
        metrics["undesirable_mean_exp"] = mean_exp
        m = _ema(state.get("ema"), mean_exp, options.ema_rate) if batch.num_undesirable else 1.0
        value = math.log(max(mean_exp, 1e-30)) if batch.num_undesirable else 0.0
        neg = value + (neg_sum_exp - neg_sum_exp.detach()) / (m + 1e-6)
        loss = -pos + neg
    elif options.preset == "bco":
        delta = state.get("delta", 0.0)
        pos, neg = batch.side_means(-F.logsigmoid(r - delta), -F.logsigmoid(-(r - delta)))
        loss = pos + neg
        metrics["reward_mean"] = float(r.detach().sum()) / batch.size
        metrics["delta"] = delta * len(r) / batch.size
    else:
        pos, neg = batch.side_means(-options.link_fn.g(r), options.link_fn.conjugate_of_g(r))
        loss = pos + neg
    metrics["divergence_estimate"] = -float(loss.detach())
    return loss, metrics
