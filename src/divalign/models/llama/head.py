"""The final norm, the output head and the log-probabilities of the chosen tokens as one autograd node, for the
written-out training pass (:mod:`divalign.models.llama.train`).

A training step needs log π(y_t | ·) of the completion tokens only. :class:`_Head` computes them from the last
hidden states, for the real completion tokens only, in one node whose backward is written out: the log-softmax
gradient (one-hot minus softmax), the head and the RMSNorm. The entropy of each next-token distribution and the
reference's log-probabilities come from the same softmax pass, without gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from divalign.models.llama import norm
from divalign.models.logprobs import entropy_of, log_softmax_at


def _logits(hidden: Tensor, gain: Tensor, weight: Tensor, eps: float, temperature: float):
    normed, r = norm.normalize(hidden, eps)
    scaled = normed * gain
    logits = (scaled @ weight.t()).float()
    if temperature != 1.0:
        logits = logits / temperature
    return normed, r, scaled, logits


class _Head(torch.autograd.Function):
    """forward(hidden (R, H), index (N,), tokens (N,), gain (H,), weight (V, H), eps, temperature, with_entropy)
    → (log-probabilities (N,), entropy (N,) or an empty tensor). ``index`` picks the row of ``hidden`` that
    predicts each token (rows may repeat)."""

    @staticmethod
    def forward(ctx, hidden, index, tokens, gain, weight, eps, temperature, with_entropy):
        normed, r, scaled, logits = _logits(hidden.index_select(0, index), gain, weight, eps, temperature)
        logp, log_z = log_softmax_at(logits, tokens)
        probs = torch.exp(logits - log_z[:, None])  # kept for the backward
        entropy = entropy_of(logits, log_z, probs) if with_entropy else logp.new_empty(0)
        ctx.save_for_backward(index, tokens, gain, weight, normed, r, scaled, probs)
        ctx.rows, ctx.temperature = hidden.shape[0], temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, d_logp: Tensor, _d_entropy):
        index, tokens, gain, weight, normed, r, scaled, probs = ctx.saved_tensors
        # d log p_y / d logits = onehot(y) − softmax, through the temperature
        d_logits = (probs * -d_logp[:, None]).scatter_add_(1, tokens[:, None], d_logp[:, None])
        if ctx.temperature != 1.0:
            d_logits = d_logits / ctx.temperature
        d_logits = d_logits.to(weight.dtype)
        d_weight = d_logits.t() @ scaled
        d_rows, d_gain = norm.backward(d_logits @ weight, gain, normed, r)
        d_hidden = d_rows.new_zeros(ctx.rows, d_rows.shape[1]).index_add_(0, index, d_rows)
        return d_hidden, None, None, d_gain, d_weight, None, None, None


def token_logprobs(hidden: Tensor, index: Tensor, tokens: Tensor, gain: Tensor, weight: Tensor, eps: float,
                   temperature: float = 1.0, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log softmax(head(RMSNorm(hidden[index])) / temperature) at ``tokens``, (N,), in fp32; and the entropy of
    each distribution (no gradient) when asked. Without gradient the same values, nothing saved."""
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad or gain.requires_grad):
        with torch.no_grad():
            _, _, _, logits = _logits(hidden.index_select(0, index), gain, weight, eps, temperature)
            logp, log_z = log_softmax_at(logits, tokens)
            return logp, entropy_of(logits, log_z) if with_entropy else None
    logp, entropy = _Head.apply(hidden, index, tokens, gain, weight, eps, temperature, with_entropy)
    return logp, entropy if with_entropy else None
