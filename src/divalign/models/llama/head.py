"""The final norm, the output head and the log-probabilities of the chosen tokens as one autograd node, for the
written-out training pass (:mod:`divalign.models.llama.train`).

A training step needs log π(y_t | ·) of the completion tokens only. :class:`_Head` computes them from the last
hidden states, for the real completion tokens only, in one node whose backward is written out: the log-softmax
gradient (one-hot minus softmax), the head and the RMSNorm. The entropy of each next-token distribution and the
reference's log-probabilities come from the same pass, without gradient.

A training pass computes all its logits with one product, straight into the one (tokens × vocabulary) buffer its
backward needs, turns them into log-probabilities and then probabilities there in place, a block of rows at a
time, and the backward forms the logits' gradient in that buffer in place too. A pass without gradient (the
reference, scoring) never holds its logits whole: it computes them a block of rows at a time into one scratch
buffer and keeps only each row's log-probability (and entropy). A block is at most :data:`BLOCK_BYTES` (below the
allocator's mmap threshold, :mod:`divalign.allocator`, so the same memory serves every block and every step
instead of fresh pages the kernel must zero) but never fewer than :data:`MIN_BLOCK_ROWS` rows: a product of a
hundred-odd rows with a large head ran at half the rate of one of a thousand. Recomputing the logits in the backward instead of keeping the probabilities
saves the training pass's buffer but costs a third product with the head, which was measured slower. Figures for
both: BENCHMARKS.md, "Speed at a real model's shape".
"""

from __future__ import annotations

import torch
from torch import Tensor

from divalign.models.llama import norm
from divalign.models.logprobs import entropy_of

#: the largest block of fp32 logits computed at once, unless that is fewer than :data:`MIN_BLOCK_ROWS` rows
BLOCK_BYTES = 16 << 20
#: the fewest rows of logits computed at once (the head's product runs slowly on fewer)
MIN_BLOCK_ROWS = 256


def _block_rows(vocab: int) -> int:
    return max(MIN_BLOCK_ROWS, BLOCK_BYTES // (4 * vocab))


def _logits_into(out: Tensor, scaled: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """``out`` (rows, V), fp32 ← scaled @ weightᵀ / temperature."""
    if out.dtype == weight.dtype:
        torch.mm(scaled, weight.t(), out=out)
    else:
        out.copy_(scaled @ weight.t())
    return out.div_(temperature) if temperature != 1.0 else out


def _forward_blocks(scaled: Tensor, tokens: Tensor, weight: Tensor, temperature: float, with_entropy: bool,
                    probs: Tensor | None = None):
    """log-probabilities at ``tokens`` and entropies (or None) of the rows of ``scaled``; with ``probs`` (rows, V),
    the probabilities are written into it.

    Each block of logits becomes its log-softmax in place (one fused kernel, exact), read at the tokens; the
    entropy is :func:`entropy_of` that log-softmax, logits whose log-normaliser is 0; the probabilities, when kept,
    are exp of the log-softmax, again in place."""
    rows, vocab = scaled.shape[0], weight.shape[0]
    logp = scaled.new_empty(rows, dtype=torch.float32)
    entropy = torch.empty_like(logp) if with_entropy else None
    step = _block_rows(vocab)
    if probs is None:
        scratch = scaled.new_empty(min(rows, step), vocab, dtype=torch.float32)
    else:  # one product: a whole one ran faster than in blocks
        _logits_into(probs, scaled, weight, temperature)
    for start in range(0, rows, step):
        block = slice(start, start + step)
        if probs is None:
            log_p = _logits_into(scratch[: len(tokens[block])], scaled[block], weight, temperature)
        else:
            log_p = probs[block]
        torch.ops.aten._log_softmax.out(log_p, 1, False, out=log_p)
        logp[block] = log_p.gather(1, tokens[block, None]).squeeze(1)
        if with_entropy:
            block_probs = torch.exp(log_p)
            entropy[block] = entropy_of(log_p, log_p.new_zeros(()), block_probs)
            if probs is not None:
                log_p.copy_(block_probs)
        elif probs is not None:
            log_p.exp_()
    return logp, entropy


class _Head(torch.autograd.Function):
    """forward(hidden (R, H), index (N,), tokens (N,), gain (H,), weight (V, H), eps, temperature, with_entropy)
    → (log-probabilities (N,), entropy (N,) or an empty tensor). ``index`` picks the row of ``hidden`` that
    predicts each token (rows may repeat)."""

    @staticmethod
    def forward(ctx, hidden, index, tokens, gain, weight, eps, temperature, with_entropy):
        normed, r = norm.normalize(hidden.index_select(0, index), eps)
        scaled = normed * gain
        probs = scaled.new_empty(scaled.shape[0], weight.shape[0], dtype=torch.float32)  # kept for the backward
        logp, entropy = _forward_blocks(scaled, tokens, weight, temperature, with_entropy, probs)
        ctx.save_for_backward(index, tokens, gain, weight, normed, r, scaled, probs)
        ctx.rows, ctx.temperature = hidden.shape[0], temperature
        if entropy is None:
            entropy = logp.new_empty(0)
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, d_logp: Tensor, _d_entropy):
        index, tokens, gain, weight, normed, r, scaled, probs = ctx.saved_tensors
        # d log p_y / d logits = onehot(y) − softmax, through the temperature; formed in the probabilities' buffer
        # (a second backward through this node then fails on the changed buffer rather than reading it)
        d_out = d_logp[:, None]
        d_logits = probs.mul_(-d_out).scatter_add_(1, tokens[:, None], d_out)
        if ctx.temperature != 1.0:
            d_logits.div_(ctx.temperature)
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
            normed, _ = norm.normalize(hidden.index_select(0, index), eps)
            logp, entropy = _forward_blocks(normed * gain, tokens, weight, temperature, with_entropy)
            return logp, entropy
    logp, entropy = _Head.apply(hidden, index, tokens, gain, weight, eps, temperature, with_entropy)
    return logp, entropy if with_entropy else None
