"""GSPO: group sequence policy optimisation (Zheng et al., arXiv 2507.18071; docs/algorithms.md#gspo).

The importance ratio is the sequence's, length-normalised — the geometric mean of its token ratios:

    s_i = (π_θ(y_i|x) / π_old(y_i|x))^{1/|y_i|} = exp((1/|y_i|)·Σ_t log ρ_{i,t}),

clipped at the sequence level: ℓ_i = −min(s_i·A_i, clip(s_i, 1 − ε_low, 1 + ε_high)·A_i), the same for every token
of the response, reduced by ``aggregation`` (default ``seq_mean_token_mean``: the mean over responses, as the paper
and TRL's ``importance_sampling_level="sequence"``), plus the optional KL term of :mod:`divalign.objectives.policy`
(with ``kl_bias_correction`` multiplied by s_i, as TRL does).

``level = "token"`` is GSPO-token: s_{i,t} = sg[s_i]·π_θ(y_{i,t}|·)/sg[π_θ(y_{i,t}|·)], equal to s_i in value but
with each token's own gradient, so that per-token advantages could differ (with one advantage per response both
give the same gradient).

Choices: the paper's clip ranges (ε_low 3e-4, ε_high 4e-4) and no KL term are the defaults. The mean log-ratio is
clamped to ±20 before exp, so s stays finite for any input. A response without tokens has s = 1 and contributes
nothing (its token sum is empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.objectives import kl
from divalign.objectives.aggregation import token_share
from divalign.objectives.batch import OnlineBatch
from divalign.objectives.policy import ClipOptions, clip_fraction_mask, clipped_surrogate, reduce, with_kl
from divalign.objectives.registry import register

LEVELS = ("sequence", "token")


@dataclass
class GSPOOptions(ClipOptions):
    """Options of the ``gspo`` objective."""

    epsilon_low: float = 3e-4
    """Lower clip range of the sequence ratio (the paper's 3e-4)."""
    epsilon_high: float = 4e-4
    """Upper clip range of the sequence ratio (the paper's 4e-4)."""
    beta: float = 0.0
    """Weight of the KL penalty to the reference (the paper uses none)."""
    level: str = "sequence"
    """sequence (GSPO) or token (GSPO-token: the sequence ratio's value with each token's gradient)."""

    def __post_init__(self):
        super().__post_init__()
        if self.level not in LEVELS:
            raise ValueError(f"level: expected one of {', '.join(LEVELS)} (got '{self.level}')")


def sequence_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(1/|y_i|)·Σ_t (log π_θ − log π_old), (B,), clamped to ±20; 0 for a response without tokens."""
    lengths = mask.sum(-1).clamp(min=1)
    mean = ((logprobs - old_logprobs) * mask).sum(-1) / lengths
    return mean.clamp(-kl.LOG_RATIO_LIMIT, kl.LOG_RATIO_LIMIT)


def sequence_ratio(batch: OnlineBatch, level: str) -> Tensor:
    """s_i broadcast over the response's tokens, (B, T): with the sequence's gradient, or (``token``) each
    token's."""
    log_s = sequence_log_ratio(batch.logprobs, batch.old_logprobs, batch.mask).unsqueeze(-1)
    if level == "token":
        log_s = log_s.detach() + batch.logprobs - batch.logprobs.detach()
    return torch.exp(log_s).expand_as(batch.logprobs)


@register("gspo", family="online", options=GSPOOptions)
def gspo_loss(batch: OnlineBatch, options: GSPOOptions):
    ratio = sequence_ratio(batch, options.level)
    adv = batch.advantages.unsqueeze(-1)
    low, high = 1.0 - options.epsilon_low, 1.0 + options.epsilon_high
    policy = clipped_surrogate(ratio, adv, low, high, options.dual_clip)
    metrics = {"policy_loss": float(reduce(policy.detach(), batch, options)),
               "clip_fraction": token_share(clip_fraction_mask(ratio, adv, low, high).float(), batch)}
    return reduce(with_kl(policy, batch, options, ratio), batch, options), metrics
