"""Log-probabilities of chosen tokens: one implementation (:func:`log_softmax_at`) for every path, and the entropy
of each next-token distribution."""

from __future__ import annotations

import torch
from torch import Tensor


def log_softmax_at(logits: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """log softmax(logits) at ``tokens`` without materialising the whole log-softmax, and the log-normaliser."""
    log_z = torch.logsumexp(logits, dim=-1)
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_z, log_z


def entropy_of(logits: Tensor, log_z: Tensor, probs: Tensor | None = None) -> Tensor:
    """Entropy of softmax(logits), without gradient, given its log-normaliser (and its probabilities if at hand)."""
    with torch.no_grad():
        if probs is None:
            probs = torch.exp(logits - log_z.unsqueeze(-1))
        return log_z - (probs * logits).sum(-1)


def logprobs_from_logits(
    logits: Tensor, tokens: Tensor, mask: Tensor, with_entropy: bool = False
) -> tuple[Tensor, Tensor | None]:
    """:func:`log_softmax_at` (and the entropy when asked), 0 where ``mask`` is 0."""
    logp, log_z = log_softmax_at(logits, tokens)
    valid = mask.bool()
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    entropy = None
    if with_entropy:
        ent = entropy_of(logits, log_z)
        entropy = torch.where(valid, ent, torch.zeros_like(ent))
    return logp, entropy
