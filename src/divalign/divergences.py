"""Catalog of f-divergences with their conjugates and the links used by variational estimators
(docs/algorithms.md#divergences).

For a convex f with f(1) = 0, D_f(P‖Q) = E_Q[f(dP/dQ)] = sup_T E_P[T] − E_Q[f*(T)] (Nguyen et al. 2010;
f-GAN, arXiv 1606.00709), with f*(t) = sup_u {t·u − f(u)} and the optimum T* = f'(dP/dQ).

The FDO / f-GRPO family (arXiv 2502.00657, 2602.05946) writes the critic as T = g(r) with
r = β·log(π_θ/π_ref) and a monotone link g whose image lies in dom f*. Two links are offered:

* ``canonical``: g(r) = f'(eʳ), so that the optimal r is the log density ratio. Then
  f*(g(r)) = eʳ·f'(eʳ) − f(eʳ) (Fenchel–Young). Each divergence writes both in a closed form that is stable
  for any r. The paper's exact definition of "canonical link" is not public; this one reproduces the authors'
  earlier HDO/BCO trainers exactly (docs/algorithms.md#links).
* ``fgan``: the output activations g_f of the f-GAN paper (Table 2).

Every function takes and returns tensors and works elementwise in any floating dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: Exponents above this are continued linearly (see :func:`safe_exp`).
EXP_LIMIT = 30.0
LOG2 = math.log(2.0)


def safe_exp(x: Tensor) -> Tensor:
    """eˣ for x ≤ 30 and its first-order continuation e³⁰·(1 + x − 30) above.

    The continuation is C¹, keeps a positive slope (no flat region that silences the gradient) and keeps loss
    and gradient finite in fp32 for log-ratios of any size. Below 30 it is exactly ``torch.exp``.
    """
    clipped = torch.exp(x.clamp(max=EXP_LIMIT))
    return torch.where(x <= EXP_LIMIT, clipped, math.exp(EXP_LIMIT) * (1.0 + (x - EXP_LIMIT)))


@dataclass(frozen=True)
class Interval:
    """A real interval (the domain of a conjugate)."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = False

    def contains(self, t: Tensor) -> Tensor:
        above = t >= self.low if self.low_closed else t > self.low
        below = t <= self.high if self.high_closed else t < self.high
        return above & below

    def __str__(self) -> str:
        left = "[" if self.low_closed else "("
        right = "]" if self.high_closed else ")"
        return f"{left}{self.low}, {self.high}{right}"


REAL_LINE = Interval()


@dataclass(frozen=True)
class Link:
    """A critic parametrisation T = g(r) together with the closed form of f*(g(r))."""

    name: str
    g: Callable[[Tensor], Tensor]
    conjugate_of_g: Callable[[Tensor], Tensor]


class Divergence:
    """One f-divergence: the generator f, its derivative, its conjugate and two links.

    Subclasses define ``f``, ``f_prime``, ``_conjugate_inside`` (f* on its domain), ``domain`` and the four
    link functions. ``conjugate`` returns +inf outside the domain, which is the true value of the supremum.
    """

    name: str = ""
    domain: Interval = REAL_LINE
    #: Whether both canonical-link loss pieces are bounded below (docs/algorithms.md#bounded-and-unbounded).
    bounded_below: bool = False

    def f(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def f_prime(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def _conjugate_inside(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def conjugate(self, t: Tensor) -> Tensor:
        inside = self.domain.contains(t)
        safe_t = torch.where(inside, t, torch.zeros_like(t) + self._interior_point())
        return torch.where(inside, self._conjugate_inside(safe_t), torch.full_like(t, math.inf))

    def _interior_point(self) -> float:
        return 0.0

    # Links: g and f*∘g in closed form.
    def canonical(self, r: Tensor) -> Tensor:
        raise NotImplementedError

    def canonical_conjugate(self, r: Tensor) -> Tensor:
        raise NotImplementedError

    def fgan(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def fgan_conjugate(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def link(self, name: str) -> Link:
        if name == "canonical":
            return Link("canonical", self.canonical, self.canonical_conjugate)
        if name == "fgan":
            return Link("fgan", self.fgan, self.fgan_conjugate)
        raise ValueError(f"unknown link '{name}' (expected one of: {', '.join(LINKS)})")

    def __repr__(self) -> str:
        return f"<divergence {self.name}>"


LINKS = ("canonical", "fgan")


class KL(Divergence):
    """Kullback–Leibler: f(u) = u·ln u, f*(t) = e^(t−1) on ℝ. Canonical g(r) = r + 1, f*∘g = eʳ."""

    name = "kl"

    def f(self, u):
        return torch.special.xlogy(u, u)

    def f_prime(self, u):
        return torch.log(u) + 1.0

    def _conjugate_inside(self, t):
        return torch.exp(t - 1.0)

    def canonical(self, r):
        return r + 1.0

    def canonical_conjugate(self, r):
        return safe_exp(r)

    def fgan(self, v):
        return v

    def fgan_conjugate(self, v):
        return safe_exp(v - 1.0)


class ReverseKL(Divergence):
    """Reverse KL: f(u) = −ln u, f*(t) = −1 − ln(−t) for t < 0. Canonical g(r) = −e⁻ʳ, f*∘g = r − 1."""

    name = "reverse_kl"
    domain = Interval(high=0.0)

    def f(self, u):
        return -torch.log(u)

    def f_prime(self, u):
        return -1.0 / u

    def _conjugate_inside(self, t):
        return -1.0 - torch.log(-t)

    def _interior_point(self):
        return -1.0

    def canonical(self, r):
        return -safe_exp(-r)

    def canonical_conjugate(self, r):
        return r - 1.0

    # The f-GAN activation −e^(−v) is the canonical link itself.
    fgan = canonical
    fgan_conjugate = canonical_conjugate


class Pearson(Divergence):
    """Pearson χ²: f(u) = (u − 1)², f*(t) = t + t²/4 for t ≥ −2 and −1 below (u ≥ 0 binds).

    Canonical g(r) = 2(eʳ − 1), f*∘g = e²ʳ − 1. f-GAN activation: identity.
    """

    name = "pearson"

    def f(self, u):
        return (u - 1.0) ** 2

    def f_prime(self, u):
        return 2.0 * (u - 1.0)

    def _conjugate_inside(self, t):
        return torch.where(t >= -2.0, t + t * t / 4.0, torch.full_like(t, -1.0))

    def canonical(self, r):
        return 2.0 * (safe_exp(r) - 1.0)

    def canonical_conjugate(self, r):
        return safe_exp(2.0 * r) - 1.0

    def fgan(self, v):
        return v

    def fgan_conjugate(self, v):
        return self._conjugate_inside(v)


class Hellinger(Divergence):
    """Squared Hellinger: f(u) = (√u − 1)², f*(t) = t/(1 − t) for t < 1.

    Canonical g(r) = 1 − e^(−r/2), f*∘g = e^(r/2) − 1 (the HDO loss of arXiv 2502.00657).
    f-GAN activation 1 − e⁻ᵛ, f*∘g = eᵛ − 1.
    """

    name = "hellinger"
    domain = Interval(high=1.0)
    bounded_below = True

    def f(self, u):
        return (torch.sqrt(u) - 1.0) ** 2

    def f_prime(self, u):
        return 1.0 - 1.0 / torch.sqrt(u)

    def _conjugate_inside(self, t):
        return t / (1.0 - t)

    def canonical(self, r):
        return 1.0 - safe_exp(-r / 2.0)

    def canonical_conjugate(self, r):
        return safe_exp(r / 2.0) - 1.0

    def fgan(self, v):
        return 1.0 - safe_exp(-v)

    def fgan_conjugate(self, v):
        return safe_exp(v) - 1.0


class JensenShannon(Divergence):
    """Jensen–Shannon in the f-GAN scaling (= 2·JS): f(u) = u ln u − (u + 1) ln((u + 1)/2).

    f*(t) = −ln(2 − eᵗ) for t < ln 2. Canonical g(r) = ln 2 + ln σ(r), f*∘g = softplus(r) − ln 2, which is the
    BCO / GAN-discriminator loss. The f-GAN activation ln 2 − ln(1 + e⁻ᵛ) is the same function.
    """

    name = "js"
    domain = Interval(high=LOG2)
    bounded_below = True

    def f(self, u):
        return torch.special.xlogy(u, u) - (u + 1.0) * torch.log((u + 1.0) / 2.0)

    def f_prime(self, u):
        return torch.log(2.0 * u / (u + 1.0))

    def _conjugate_inside(self, t):
        return -torch.log(2.0 - torch.exp(t))

    def canonical(self, r):
        return LOG2 - F.softplus(-r)

    def canonical_conjugate(self, r):
        return F.softplus(r) - LOG2

    fgan = canonical
    fgan_conjugate = canonical_conjugate


class TotalVariation(Divergence):
    """Total variation: f(u) = ½|u − 1|, f*(t) = t on [−½, ½].

    f'(eʳ) = ½·sign(r) has zero gradient, so the canonical link is replaced by its smooth version
    g(r) = σ(r) − ½ = ½·tanh(r/2) (docs/algorithms.md#links, a deviation: the literal canonical link is useless for
    training). It yields the KTO-shaped loss −E⁺[σ(r)] + E⁻[σ(r)]. f-GAN activation: ½·tanh(v).
    """

    name = "tv"
    domain = Interval(low=-0.5, high=0.5, low_closed=True, high_closed=True)
    bounded_below = True

    def f(self, u):
        return 0.5 * torch.abs(u - 1.0)

    def f_prime(self, u):
        return 0.5 * torch.sign(u - 1.0)

    def _conjugate_inside(self, t):
        return t

    def canonical(self, r):
        return torch.sigmoid(r) - 0.5

    canonical_conjugate = canonical

    def fgan(self, v):
        return 0.5 * torch.tanh(v)

    fgan_conjugate = fgan


class Alpha(Divergence):
    """α-divergence (Amari/Cichocki form): f(u) = (u^α − 1 − α(u − 1)) / (α(α − 1)), α ∉ {0, 1}.

    α → 1 gives KL (u ln u − u + 1), α → 0 reverse KL, α = ½ gives 2·squared Hellinger, α = 2 gives ½·Pearson.
    f'(u) = (u^(α−1) − 1)/(α − 1); f*(t) = ((1 + (α − 1)t)^(α/(α−1)) − 1)/α where 1 + (α − 1)t > 0, so the domain
    is t < 1/(1 − α) for α < 1 and ℝ for α > 1 (there f* = −1/α for t ≤ −1/(α − 1), where u ≥ 0 binds).
    Canonical g(r) = (e^((α−1)r) − 1)/(α − 1), f*∘g = (e^(αr) − 1)/α.

    Convention: f-DPO (arXiv 2309.16240) writes the same family with α_fDPO = 1 − α.
    The f-GAN paper gives no activation for α; ``fgan`` is the identity for α > 1 (as for Pearson) and the
    canonical link for α < 1, whose image is exactly the bounded domain.
    """

    name = "alpha"

    def __init__(self, alpha: float = 0.5):
        alpha = float(alpha)
        if not math.isfinite(alpha) or alpha in (0.0, 1.0):
            raise ValueError(
                f"alpha divergence needs alpha not in {{0, 1}} (got {alpha}); use 'reverse_kl' for 0 and 'kl' for 1"
            )
        self.alpha = alpha
        self.domain = Interval(high=1.0 / (1.0 - alpha)) if alpha < 1 else REAL_LINE
        self.bounded_below = False

    def f(self, u):
        a = self.alpha
        return (u**a - 1.0 - a * (u - 1.0)) / (a * (a - 1.0))

    def f_prime(self, u):
        a = self.alpha
        return (u ** (a - 1.0) - 1.0) / (a - 1.0)

    def _conjugate_inside(self, t):
        a = self.alpha
        base = 1.0 + (a - 1.0) * t
        inner = (base.clamp(min=0.0) ** (a / (a - 1.0)) - 1.0) / a
        if a > 1.0:
            return torch.where(base > 0, inner, torch.full_like(t, -1.0 / a))
        return inner

    def canonical(self, r):
        a = self.alpha
        return (safe_exp((a - 1.0) * r) - 1.0) / (a - 1.0)

    def canonical_conjugate(self, r):
        a = self.alpha
        return (safe_exp(a * r) - 1.0) / a

    def fgan(self, v):
        return v if self.alpha > 1.0 else self.canonical(v)

    def fgan_conjugate(self, v):
        return self._conjugate_inside(v) if self.alpha > 1.0 else self.canonical_conjugate(v)

    def __repr__(self) -> str:
        return f"<divergence alpha={self.alpha}>"


_CATALOG: dict[str, type[Divergence]] = {
    cls.name: cls for cls in (KL, ReverseKL, Pearson, Hellinger, JensenShannon, TotalVariation, Alpha)
}
#: Aliases used by the f-GRPO paper and its code. ("forward_kl" is deliberately not one: in f-DPO it names the
#: regulariser KL(π_ref ‖ π_θ), whose generator is the catalog's reverse_kl; see divalign.objectives.fdpo.)
_ALIASES = {"jensen_shannon": "js", "total_variation": "tv", "chi2": "pearson"}
NAMES = tuple(_CATALOG)


def by_name(name: str, alpha: float = 0.5) -> Divergence:
    """``get`` for option sets that carry an ``alpha`` field used only by the alpha divergence."""
    return get(name, alpha=alpha) if _ALIASES.get(name, name) == "alpha" else get(name)


def get(name: str, **params) -> Divergence:
    """Return the divergence called ``name`` (``kl``, ``reverse_kl``, ``pearson``, ``hellinger``, ``js``, ``tv``,
    ``alpha``); ``alpha`` takes the parameter ``alpha``."""
    key = _ALIASES.get(name, name)
    if key not in _CATALOG:
        raise ValueError(f"unknown divergence '{name}' (expected one of: {', '.join(NAMES)})")
    cls = _CATALOG[key]
    if cls is Alpha:
        return Alpha(**params)
    if params:
        raise ValueError(f"divergence '{name}' takes no parameters (got {', '.join(params)})")
    return cls()
