"""f-GRPO: on-policy RL as variational estimation of an f-divergence (Haldar et al., arXiv 2602.05946;
docs/algorithms.md#f-grpo).

Not to be confused with the focal-loss "F-GRPO" of Plyusov et al. (arXiv 2602.06717), which rescales GRPO
advantages by (1 − p̂)^γ and keeps the clipped surrogate; that method is not this one.

Responses with above-average reward in their group (a_i > 0) sample the reward-aligned distribution D⁺,
those with below-average reward (a_i < 0) the reward-unaligned D⁻. With the implicit reward
r_θ = β·log(π_θ/π_ref) and a link g into dom f*, the loss is the negative variational bound

    L = E_x Σ_i −a_i·ψ_i / N,   ψ_i = w_i⁺·g(r_{θ,i}) if a_i > 0,  w_i⁻·f*(g(r_{θ,i})) if a_i ≤ 0,

so minimising it maximises Ê⁺[g(r)] − Ê⁻[f*(g(r))], an estimate of D_f(D⁺ ‖ D⁻) (the variational bound of
docs/algorithms.md#divergences). Responses with a_i = 0 (for example every response of a group whose rewards are all equal)
contribute nothing. The metric ``divergence_estimate`` is −L before ``loss_scale``.

Every point where the sources disagree is an option; defaults and why:

* ``link="canonical"``: g(r) = f'(eʳ), under which the optimum r is the log density ratio; it reproduces the
  authors' earlier HDO/BCO losses exactly. ``fgan`` uses the f-GAN activations. The two differ materially only
  for Pearson χ² and TV. TV's literal canonical link has zero gradient and is replaced by σ(r) − ½.
* ``level="token"`` with ``aggregation="group_token_mean"``: Form B, the latest written form of the paper
  (r per token; per prompt, the token sum over that prompt's tokens). Per-token log-ratios stay small, so
  exponential pieces stay well conditioned on long responses. ``level="sequence"`` is Form A: r from the
  summed log-ratio, terms averaged over the G responses of a prompt (``aggregation`` is then unused).
* ``weights="abs_adv"``: w⁺ = w⁻ = 1, so each response is weighted by |a_i| (the simplification used by the
  published re-implementations). ``softmax_is`` multiplies by self-normalised importance weights
  softmax_j(±R_j − log π_old(y_j|x)) over the aligned (resp. unaligned) responses of the prompt, rescaled to
  average 1; normalising over the truncated subset rather than all G, and the full-sequence log π_old, are
  our choices (the paper is unclear). They are computed in log space; their effective sample size is logged.
* ``gamma_old=0``: the paper's statistic. The authors' released code adds γ·log(π_θ/π_old) to r (γ = 1 in
  their scripts); set ``gamma_old=1`` for that behaviour.
* ``loss_scale=1``: the paper's constant (written 1/(1 + β⁻¹) in one revision, (1 + β⁻¹) in Algorithm 1) only
  rescales the gradient, which Adam largely undoes; it is left to the user.
* No ratio clipping and no separate KL penalty: the reference enters only through r_θ, as in the paper. The
  bounded divergences (JS, Hellinger, TV) then act as a soft trust region around π_ref.
* Exponentials use :func:`divalign.divergences.safe_exp` (exact up to exponent 30, linear above) so loss and
  gradient are finite for any log-ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from divalign import divergences
from divalign.groups import group_softmax, group_sum
from divalign.objectives.aggregation import aggregate, check_mode, group_average, sequence_share, token_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.interface import OnlineOptions
from divalign.objectives.registry import register

LEVELS = ("token", "sequence")
WEIGHTS = ("abs_adv", "softmax_is")


@dataclass
class FGRPOOptions(OnlineOptions):
    """Options of the ``fgrpo`` objective (see the module docstring for the reasons behind each default)."""

    divergence: str = "hellinger"
    """kl, reverse_kl, pearson, hellinger, js, tv or alpha."""
    alpha: float = 0.5
    """Parameter of the alpha divergence (ignored by the others)."""
    link: str = "canonical"
    """canonical (g(r) = f'(e^r)) or fgan (f-GAN output activation)."""
    level: str = "token"
    """token (Form B: r per token) or sequence (Form A: r from the summed log-ratio)."""
    aggregation: str = "group_token_mean"
    """Token-level reduction: group_token_mean (Form B), token_mean, seq_mean_token_mean, seq_mean_token_sum_norm."""
    weights: str = "abs_adv"
    """abs_adv (|a_i|) or softmax_is (|a_i| times self-normalised importance weights)."""
    gamma_old: float = 0.0
    """Coefficient of log(pi/pi_old) added to r (1.0 reproduces the authors' released code)."""
    loss_scale: float = 1.0
    """Constant multiplying the loss (the paper's (1 + 1/beta) factor is one choice)."""
    beta: float = 0.1
    """Scale of the implicit reward r = beta * log(pi/pi_ref); must be > 0."""

    advantage: ClassVar[str] = "group"

    def __post_init__(self):
        self.divergence_fn = divergences.by_name(self.divergence, self.alpha)
        self.link_fn = self.divergence_fn.link(self.link)
        if self.level not in LEVELS:
            raise ValueError(f"fgrpo.level: expected one of {', '.join(LEVELS)} (got '{self.level}')")
        if self.weights not in WEIGHTS:
            raise ValueError(f"fgrpo.weights: expected one of {', '.join(WEIGHTS)} (got '{self.weights}')")
        check_mode(self.aggregation, "fgrpo.aggregation")
        if not self.beta > 0:
            raise ValueError(f"fgrpo.beta must be > 0 (got {self.beta}): it scales r = beta * log(pi/pi_ref)")

    def needs_reference(self) -> bool:
        return True


def importance_weights(batch: OnlineBatch) -> tuple[torch.Tensor, float]:
    """Self-normalised weights softmax(±R_j − log π_old(y_j|x)) over each prompt's aligned / unaligned responses.

    Returns per-response weights that average 1 over each subset, and the sum over the (subset, prompt) pairs of
    this micro-batch of the effective-sample-size fraction (1/Σp²)/count, and how many pairs that sum covers.
    """
    old_seq = batch.sequence_sum(batch.old_logprobs)
    weights = torch.zeros_like(batch.rewards)
    ess_sum, ess_count = 0.0, 0
    n = batch.local_groups
    for sign, member in ((1.0, batch.advantages > 0), (-1.0, batch.advantages < 0)):
        if not bool(member.any()):
            continue
        p = group_softmax(sign * batch.rewards - old_seq, batch.group_ids, n, member)
        count = group_sum(member.to(p.dtype), batch.group_ids, n)
        weights = torch.where(member, p * count[batch.group_ids], weights)
        has = count > 0
        ess_sum += float(((1.0 / group_sum(p * p, batch.group_ids, n)[has]) / count[has]).sum())
        ess_count += int(has.sum())
    return weights, ess_sum, ess_count


@register("fgrpo", family="online", options=FGRPOOptions)
def fgrpo_loss(batch: OnlineBatch, options: FGRPOOptions):
    if batch.ref_logprobs is None:
        raise ValueError("fgrpo needs reference log-probabilities")
    ref_term = batch.logprobs - batch.ref_logprobs
    old_term = batch.logprobs - batch.old_logprobs
    if options.level == "sequence":
        ref_term, old_term = batch.sequence_sum(ref_term), batch.sequence_sum(old_term)
    r = options.beta * ref_term
    if options.gamma_old:
        r = r + options.gamma_old * old_term

    adv = batch.advantages
    weight = adv.abs()
    metrics = {}
    if options.weights == "softmax_is":
        is_weights, ess_sum, ess_count = importance_weights(batch)
        weight = weight * is_weights.detach()
        # Share of the whole batch's mean over (side, prompt) pairs; every prompt of a step with signal has both.
        metrics["is_ess"] = ess_sum / max(1, 2 * batch.num_groups) if ess_count else 0.0
    aligned = adv > 0
    if options.level == "token":
        weight, aligned = weight.unsqueeze(-1), aligned.unsqueeze(-1)

    link = options.link_fn
    per_item = weight * torch.where(aligned, -link.g(r), link.conjugate_of_g(r))
    if options.level == "sequence":
        unscaled = group_average(per_item, batch)
        r_mean = sequence_share(r.detach(), batch)
    else:
        unscaled = aggregate(per_item, batch, options.aggregation)
        r_mean = token_share(r.detach(), batch)
    metrics.update(
        {
            "divergence_estimate": -float(unscaled.item()),
            "implicit_reward": r_mean,
            # f-GRPO has no ratio clipping; logged for a uniform schema across objectives.
            "clip_fraction": 0.0,
        }
    )
    return options.loss_scale * unscaled, metrics
