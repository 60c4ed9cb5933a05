"""Llama training with a written-out backward, and the frozen reference run in the same pass.

For the small models this library trains on CPU, a training step's time outside the matrix products goes to many
small operations: each autograd node costs the recording of the forward and a visit by the backward engine,
composite operations (RMSNorm's backward, SDPA at short lengths) issue several kernels, and each elementwise
kernel is a pass over the activations, padding included. :class:`_Stack` does the decoder stack of a Llama model
as one autograd node: its forward runs the layers with plain tensor operations and keeps what the backward needs,
its backward is written out (RMSNorm, RoPE, attention and SwiGLU by their derivatives) and returns the gradients
of the model's own parameters, so the optimizer, checkpoints and saved folders stay the Hugging Face ones.

* It runs the tokens of a :class:`divalign.models.llama.layout.TokenLayout`: no padding, and each prompt shared by
  a group of completions once; attention reads them through index maps.
* With a frozen reference of the same shape, both models run in one pass: their weights sit in buffers with a
  leading model axis (:class:`_PairWeights`; the reference's half is its parameters' own memory), so every product
  is one batched product over the two and every elementwise operation one call; the backward runs for the policy
  only.
* The last layer runs its attention output, residual and MLP only for the tokens whose output is read (those
  that predict a completion token).
* The first layer's norm and QKV product depend on the token alone: when a batch repeats its tokens (at most half
  of them distinct, as with character-level and other small vocabularies), they run once per distinct token and
  their gradients are summed per distinct token before the weight gradient and the norm's backward
  (:class:`_DistinctTokens`).
* Attention runs a block of head-major entries at a time (:func:`_attention_forward`, :func:`_attention_backward`):
  each block's scores turn into probabilities, and their gradient into the scores', in place while still in
  cache; of the (entries × slots × slots) tensors only the attention bias (once per pass) and the policy's
  probabilities, which the backward needs, are allocated whole. Long completions otherwise made several such
  tensors per layer, each above the allocator's mmap threshold (:mod:`divalign.allocator`) and so fresh pages to
  zero every time.
* The final norm, the output head and the log-probabilities are one more node (:mod:`divalign.models.llama.head`).

Values and gradients equal the Hugging Face forward's (tests); what the pass is worth is in BENCHMARKS.md ("Figures
behind choices in the code").
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divalign.models.llama import norm
from divalign.models.llama.head import token_logprobs
from divalign.models.llama.layout import TokenLayout, token_layout
from divalign.models.llama.weights import LlamaDims, LlamaParams, rope_table

#: the largest block of fp32 attention scores computed at once (see :func:`_attention_forward`)
ATTENTION_BLOCK_BYTES = 2 << 20

#: the smallest stacked hidden state (models × tokens × hidden) whose saved activations are copied out per model
#: (see :func:`_layers_forward`)
COPY_OUT_BYTES = 1 << 20

#: per layer, in the order of :meth:`LayerParams.tensors`: attention norm gain, q, k, v, o, MLP norm gain, gate, up,
#: down
_PER_LAYER = 9

_rope_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rope_by_position(params: LlamaParams, length: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """cos, the forward sin and the backward sin of RoPE (see :func:`_rotate`) for positions < ``length``, (·, D);
    kept per model and grown when a longer batch comes."""
    dims = params.dims
    key = (dtype, device, params.inv_freq._version)
    cached = _rope_cache.setdefault(params.rotary, {}).get(key)
    if cached is None or cached[0].shape[0] < length:
        cos, sin = rope_table(params.inv_freq, params.rope_scale, dtype, max(length, 64), device)
        half = dims.d // 2
        sign = torch.ones(dims.d, dtype=dtype, device=device)
        sign[:half] = -1
        cached = (cos, sin * sign, sin.roll(half, -1) * -sign)
        _rope_cache[params.rotary][key] = cached
    return cached


def _tables(params: LlamaParams, layout: TokenLayout, dtype: torch.dtype, models: int = 1
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per token (R, 1, D): cos, the forward sin and the backward sin of RoPE; and the attention bias
    (models·rows·Hkv, rep·L, L), 0 where a slot may see a key and −inf elsewhere, its rows the queries of the rep
    heads that share a key head, repeated for the ``models`` run stacked."""
    dims = params.dims
    device = layout.token_ids.device
    length = layout.length
    tables = _rope_by_position(params, length, dtype, device)
    cos, sin_fwd, sin_bwd = (t[layout.positions].unsqueeze(1) for t in tables)
    bias = torch.zeros(layout.allowed.shape, dtype=dtype, device=device).masked_fill_(~layout.allowed, float("-inf"))
    rep = dims.hq // dims.hk
    bias = bias[None, :, None, None].expand(models, -1, dims.hk, rep, -1, -1)
    bias = bias.reshape(models * layout.rows * dims.hk, rep * length, length)
    return cos, sin_fwd, sin_bwd, bias


# ----------------------------------------------------------------------------- the layer math (pure functions)


def _cos_plus_rolled_sin(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """x·cos + roll(x, D/2)·signed_sin over the last axis, the roll read as two halves (no copy of x)."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], signed_sin[..., :half])
    out[..., half:].addcmul_(x[..., :half], signed_sin[..., half:])
    return out


def _rotate(x: Tensor, cos: Tensor, sin_fwd: Tensor) -> Tensor:
    """RoPE on (T, heads, D): x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁) written as roll(x)·(−1, 1)
    with the sign in ``sin_fwd``."""
    return _cos_plus_rolled_sin(x, cos, sin_fwd)


def _unrotate(g: Tensor, cos: Tensor, sin_bwd: Tensor) -> Tensor:
    """The gradient through :func:`_rotate`: g·cos + rotate_halfᵀ(g·sin), rotate_halfᵀ(y) = (y₂, −y₁) =
    roll(y)·(1, −1), with roll(sin) and the sign in ``sin_bwd``."""
    return _cos_plus_rolled_sin(g, cos, sin_bwd)


@dataclass
class _AttentionIndex:
    """Where attention's head-major tensors read and write the per-token ones (flattened (token, head) rows).

    Head-major: (rows·Hkv, per·L, D), per key head of each attention row the ``per`` heads' slots one after
    another (per = rep for queries, 1 for keys and values), so grouped-query attention is one batched product.
    """

    query: Tensor  #: head-major query rows ← rows of qk viewed (R·(Hq + Hkv), D)
    key: Tensor  #: head-major key rows ← the same
    value: Tensor  #: head-major value rows ← rows of qkv viewed (R·(Hq + 2·Hkv), D)
    output: Tensor  #: (R·Hq) token-major output rows ← head-major rows (each token's own slot)
    key_grad: Tensor  #: head-major key / value rows → rows of (R·Hkv, D) their gradients add into


def _attention_index(layout: TokenLayout, dims: LlamaDims) -> _AttentionIndex:
    """The layout's :class:`_AttentionIndex`, built once and kept on the layout for the backward."""
    if getattr(layout, "attention_index", None) is None:
        layout.attention_index = _build_attention_index(layout, dims)
    return layout.attention_index


def _build_attention_index(layout: TokenLayout, dims: LlamaDims) -> _AttentionIndex:
    hq, hk, rep, length = dims.hq, dims.hk, dims.hq // dims.hk, layout.length
    device = layout.key_map.device
    token = layout.key_map.view(layout.rows, 1, 1, length)
    query_heads = torch.arange(hq, device=device).view(1, hk, rep, 1)
    key_heads = torch.arange(hk, device=device).view(1, hk, 1, 1)
    row, slot = layout.output_slot // length, layout.output_slot % length
    output = (row[:, None] * hq + torch.arange(hq, device=device)) * length + slot[:, None]
    return _AttentionIndex(
        query=(token * (hq + hk) + query_heads).reshape(-1),
        key=(token * (hq + hk) + hq + key_heads).reshape(-1),
        value=(token * (hq + 2 * hk) + hq + hk + key_heads).reshape(-1),
        output=output.reshape(-1),
        key_grad=(token * hk + key_heads).reshape(-1),
    )


@dataclass
class _DistinctTokens:
    """The distinct tokens of a layout: ``first`` (U,) where each first occurs, ``inverse`` (R,) which distinct
    token each token is."""

    first: Tensor
    inverse: Tensor


def _distinct_tokens(layout: TokenLayout) -> _DistinctTokens | None:
    """The layout's :class:`_DistinctTokens` (built once and kept on the layout) when at most half its tokens are
    distinct; None otherwise, where gathering would cost more than it saves."""
    if layout.distinct_tokens is None:
        ids = layout.token_ids
        values, inverse = torch.unique(ids, return_inverse=True)
        first = torch.full_like(values, len(ids)).scatter_reduce_(
            0, inverse, torch.arange(len(ids), device=ids.device), "amin")
        layout.distinct_tokens = _DistinctTokens(first, inverse)
    distinct = layout.distinct_tokens
    return distinct if 2 * len(distinct.first) <= len(distinct.inverse) else None


def _gather_rows(t: Tensor, index: Tensor, models: int, width: int) -> Tensor:
    """``t`` viewed as (models, rows of ``width``) → the rows at ``index``, (models, len(index), width)."""
    return t.reshape(models, -1, width).index_select(1, index)


def _block_entries(queries: int, length: int) -> int:
    """How many head-major entries (each ``queries`` × ``length`` fp32 scores) one attention block holds."""
    return max(1, ATTENTION_BLOCK_BYTES // (4 * queries * length))


def _attention_forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, kept: int) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ·scale + bias) v over head-major entries (batch, queries, D), a block of
    :data:`ATTENTION_BLOCK_BYTES` of scores at a time: each block's scores become probabilities in place and meet v
    while still in cache, and no (batch × queries × length) tensor is allocated beyond the probabilities of the first
    ``kept`` entries (model 0's), which the backward needs. Returns the output and those probabilities."""
    batch, queries, length = q.shape[0], q.shape[1], k.shape[1]
    out = q.new_empty(batch, queries, v.shape[2])
    probs = q.new_empty(kept, queries, length)
    step = _block_entries(queries, length)
    scratch = q.new_empty(min(step, batch - kept), queries, length) if batch > kept else None
    for first, last in ((0, kept), (kept, batch)):
        for start in range(first, last, step):
            end = min(last, start + step)
            scores = probs[start:end] if last == kept else scratch[: end - start]
            torch.baddbmm(bias[start:end], q[start:end], k[start:end].transpose(1, 2), alpha=scale, out=scores)
            torch.ops.aten._softmax.out(scores, -1, False, out=scores)
            torch.bmm(scores, v[start:end], out=out[start:end])
    return out, probs


def _attention_backward(d_out: Tensor, q: Tensor, k: Tensor, v: Tensor, probs: Tensor, scale: float
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of q, k and v through :func:`_attention_forward` (per head-major entry), from the output's
    gradient, in the same blocks: the probabilities' gradient becomes the scores' in place."""
    batch, queries, length = probs.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    step = _block_entries(queries, length)
    scratch = probs.new_empty(min(step, batch), queries, length)
    for start in range(0, batch, step):
        end = min(batch, start + step)
        d_scores = torch.bmm(d_out[start:end], v[start:end].transpose(1, 2), out=scratch[: end - start])
        torch.bmm(probs[start:end].transpose(1, 2), d_out[start:end], out=dv[start:end])
        torch.ops.aten._softmax_backward_data.out(d_scores, probs[start:end], -1, probs.dtype, grad_input=d_scores)
        d_scores.mul_(scale)
        torch.bmm(d_scores, k[start:end], out=dq[start:end])
        torch.bmm(d_scores.transpose(1, 2), q[start:end], out=dk[start:end])
    return dq, dk, dv


def _layers_forward(dims: LlamaDims, x: Tensor, cos: Tensor, sin_fwd: Tensor, bias: Tensor, weights,
                    layout: TokenLayout, outputs: Tensor | None = None):
    """The decoder layers on x (M, R, H), the tokens of ``layout``, M models stacked, each layer's weights stacked
    the same way (gain1, qkv, o, gain2, gate_up, down; see :func:`_fuse`). Attention reads the tokens
    through the layout's slots. With ``outputs`` (indices of the tokens whose output is wanted), the last layer
    runs its attention output, its residual and its MLP for those tokens only: the others' last outputs feed
    nothing. Returns the last output, (M, R or len(outputs), H), and per layer what the backward of model 0
    needs."""
    hq, hk, d = dims.hq, dims.hk, dims.d
    qd, kd, rep = hq * d, hk * d, hq // hk
    models = x.shape[0]
    index, length = _attention_index(layout, dims), layout.length
    rows = layout.rows * hk  # model 0's rows of the head-major tensors
    tokens = x.shape[1]
    # model 0's part of a stacked tensor would keep the other models' part alive until the backward: copy it out,
    # unless the activations are too small for the memory to matter next to the copies' cost per call
    own = Tensor.clone if models > 1 and x.numel() * x.element_size() >= COPY_OUT_BYTES else (lambda t: t)
    saved = []
    for i, (gain1, w_qkv, w_o, gain2, w_gate_up, w_down) in enumerate(weights):
        kept = outputs if i == len(weights) - 1 else None
        distinct = _distinct_tokens(layout) if i == 0 else None
        normed1, r1 = norm.normalize(x if distinct is None else x.index_select(1, distinct.first), dims.eps)
        a1 = normed1 * gain1
        qkv = torch.bmm(a1, w_qkv.transpose(1, 2))
        if distinct is not None:
            qkv = qkv.index_select(1, distinct.inverse)
        qk = _rotate(qkv[..., : qd + kd].unflatten(-1, (hq + hk, d)), cos, sin_fwd)
        q = _gather_rows(qk, index.query, models, d).view(-1, rep * length, d)
        k = _gather_rows(qk, index.key, models, d).view(-1, length, d)
        v = _gather_rows(qkv, index.value, models, d).view(-1, length, d)
        mixed, probs = _attention_forward(q, k, v, bias, dims.scale, rows)
        att_rows = index.output if kept is None else index.output.view(tokens, hq)[kept].reshape(-1)
        att = _gather_rows(mixed, att_rows, models, d).view(models, -1, qd)
        x2 = torch.baddbmm(x if kept is None else x[:, kept], att, w_o.transpose(1, 2))
        normed2, r2 = norm.normalize(x2, dims.eps)
        a2 = normed2 * gain2
        gate, up = torch.bmm(a2, w_gate_up.transpose(1, 2)).chunk(2, dim=-1)
        act = F.silu(gate)
        h = act * up
        x = torch.baddbmm(x2, h, w_down.transpose(1, 2))
        saved.append((*(own(t) for t in (normed1[0], r1[0], q[:rows], k[:rows], v[:rows])), probs,
                      *(own(t) for t in (att[0], normed2[0], r2[0], gate[0], up[0], act[0])), kept, att_rows,
                      distinct))
    return x, saved


def _layers_backward(dims: LlamaDims, g: Tensor, cos: Tensor, sin_bwd: Tensor, saved, weights, layout: TokenLayout):
    """Gradient of model 0 through :func:`_layers_forward`, from the gradient g of its last output. Returns the
    input gradient and, per layer, the gradients of (gain1, qkv, o, gain2, gate_up, down). A token's key and value
    gradients sum over every slot that reads it (a shared prompt's, over its group)."""
    hq, hk, d = dims.hq, dims.hk, dims.d
    rep, length, tokens = hq // hk, layout.length, len(layout.token_ids)
    index = _attention_index(layout, dims)
    grads = []
    for (gain1, w_qkv, w_o, gain2, w_gate_up, w_down), (normed1, r1, q, k, v, probs, att, normed2, r2, gate, up, act,
                                                         kept, att_rows, distinct) in zip(reversed(weights),
                                                                                          reversed(saved)):
        # the products' inputs a1, a2 and h are recomputed, the same operations as the forward's, not kept
        # MLP: x3 = x2 + (silu(gate)·up) @ downᵀ
        d_down = g.t() @ (act * up)
        dh = g @ w_down[0]
        d_gate_up = dh.new_empty(dh.shape[0], 2 * dh.shape[1])  # written in halves (no concatenation pass)
        torch.ops.aten.silu_backward.grad_input(dh * up, gate, grad_input=d_gate_up[:, : dh.shape[1]])
        torch.mul(dh, act, out=d_gate_up[:, dh.shape[1] :])
        d_w_gate_up = d_gate_up.t() @ (normed2 * gain2[0])  # the parameters' layout: a transposed one costs a copy
        da2 = d_gate_up @ w_gate_up[0]
        g, d_gain2 = norm.backward(da2, gain2[0, 0], normed2, r2, residual=g)
        # attention: x2 = x + softmax(q kᵀ/√D + bias) v @ oᵀ
        d_o = g.t() @ att
        d_att = g.new_zeros(probs.shape[0] * rep * length, d).index_copy_(0, att_rows, (g @ w_o[0]).view(-1, d))
        dq, dk, dv = _attention_backward(d_att.view(-1, rep * length, d), q, k, v, probs, dims.scale)
        # a query is read only from its own slot; a key or value from every slot that reads its token
        dq = dq.view(-1, d).index_select(0, index.output).view(tokens, hq, d)
        dk = g.new_zeros(tokens * hk, d).index_add_(0, index.key_grad, dk.view(-1, d))
        dv = g.new_zeros(tokens * hk, d).index_add_(0, index.key_grad, dv.view(-1, d))
        d_qk = torch.cat([dq, dk.view(tokens, hk, d)], dim=1)
        d_qkv = torch.cat([_unrotate(d_qk, cos, sin_bwd).flatten(1), dv.view(tokens, hk * d)], -1)
        if distinct is not None:  # the norm and product ran per distinct token: sum their gradients likewise
            d_qkv = d_qkv.new_zeros(len(distinct.first), d_qkv.shape[1]).index_add_(0, distinct.inverse, d_qkv)
        d_w_qkv = d_qkv.t() @ (normed1 * gain1[0])
        da1 = d_qkv @ w_qkv[0]
        if kept is not None:  # the residual reached only the kept tokens
            g = g.new_zeros(tokens, g.shape[1]).index_copy_(0, kept, g)
        if distinct is None:
            g, d_gain1 = norm.backward(da1, gain1[0, 0], normed1, r1, residual=g)
        else:
            d_x, d_gain1 = norm.backward(da1, gain1[0, 0], normed1, r1)
            g = g.index_add_(0, distinct.first, d_x)  # g is this function's own tensor here
        grads.append((d_gain1, d_w_qkv, d_o, d_gain2, d_w_gate_up, d_down))
    return g, grads[::-1]


# ----------------------------------------------------------------------------- weights


def same_shape(params: LlamaParams, reference: LlamaParams | None) -> bool:
    """Whether a model of ``reference`` parameters can run stacked with one of ``params``: the same sizes and
    dtype (the parameter shapes follow from these)."""
    return reference is not None and reference.shape_key() == params.shape_key()


def _fuse(params: list[Tensor]) -> list[tuple[Tensor, ...]]:
    """:meth:`LlamaParams.layer_tensors` → per layer (gain1, qkv, o, gain2, gate_up, down) with a leading model
    axis of 1, q, k, v and gate, up concatenated (out, in), gains shaped (1, 1, H) to broadcast."""
    out = []
    for i in range(0, len(params), _PER_LAYER):
        ln1, wq, wk, wv, wo, ln2, wg, wu, wd = params[i:i + _PER_LAYER]
        out.append((ln1[None, None], torch.cat([wq, wk, wv])[None], wo[None], ln2[None, None],
                    torch.cat([wg, wu])[None], wd[None]))
    return out


def _fused_shapes(layer) -> list[tuple[int, ...]]:
    """The shapes of :func:`_fuse`'s tensors for one :class:`LayerParams`, without the model axis."""
    hidden = layer.attn_norm.shape[0]
    return [(1, hidden), (layer.q.shape[0] + layer.k.shape[0] + layer.v.shape[0], hidden), tuple(layer.o.shape),
            (1, hidden), (layer.gate.shape[0] + layer.up.shape[0], hidden), tuple(layer.down.shape)]


class _PairWeights:
    """A policy's and its frozen reference's fused weights (the layout of :func:`_fuse`) in buffers with a leading
    model axis of 2, kept per reference. The reference's half holds the reference's weights themselves: its layer
    parameters become views of it (each a contiguous block), so they are held once and an in-place change to them
    is seen by the next pass; a parameter replaced by another tensor since is copied in and viewed again. Saving
    such a reference with ``save_pretrained`` sees tensors that share memory: save a copy. The policy's half is
    rewritten on every forward, straight into it (no stacking pass). ``owner`` names the forward whose policy
    weights the buffers hold, so a backward can tell whether they are still its own."""

    def __init__(self, reference: LlamaParams):
        self.reference_params = reference.layer_tensors()
        like = self.reference_params[0]
        self.layers = [tuple(like.new_empty((2, *shape)) for shape in _fused_shapes(layer))
                       for layer in reference.layers]
        q_k_rows = [(layer.q.shape[0], layer.k.shape[0]) for layer in reference.layers]
        self.policy_views, self.reference_views = self._views(0, q_k_rows), self._views(1, q_k_rows)
        self.owner: object | None = None
        self._view_reference()

    def _views(self, slot: int, q_k_rows: list[tuple[int, int]]) -> list[Tensor]:
        """Per parameter of :meth:`LlamaParams.layer_tensors`, its block of the buffers' half ``slot``: q, k, v
        (and gate, up) are row ranges of one buffer."""
        views = []
        for (gain1, qkv, o, gain2, gate_up, down), (q_rows, k_rows) in zip(self.layers, q_k_rows):
            views += [gain1[slot, 0], qkv[slot, :q_rows], qkv[slot, q_rows:q_rows + k_rows],
                      qkv[slot, q_rows + k_rows:], o[slot], gain2[slot, 0], gate_up[slot, : down.shape[2]],
                      gate_up[slot, down.shape[2]:], down[slot]]
        return views

    @torch.no_grad()
    def _view_reference(self) -> None:
        for view, param in zip(self.reference_views, self.reference_params):
            view.copy_(param)
            param.data = view
        self.pointers = [t.data_ptr() for t in self.reference_params]

    def fill(self, params) -> object:
        if [t.data_ptr() for t in self.reference_params] != self.pointers:
            self._view_reference()
        torch._foreach_copy_(self.policy_views, [t.detach() for t in params])
        self.owner = object()
        return self.owner


_pair_weights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pair_weights(reference: LlamaParams) -> _PairWeights:
    if reference not in _pair_weights:
        _pair_weights[reference] = _PairWeights(reference)
    return _pair_weights[reference]


# ----------------------------------------------------------------------------- autograd


class _Stack(torch.autograd.Function):
    """The decoder layers as one autograd node; see the module docstring.

    forward(dims, tables, layout, outputs (see :func:`_layers_forward`) or None, policy embeddings (R, H) of the
    layout's tokens, reference embeddings or None, the reference's :func:`pair_weights` or None, *policy layer
    parameters) → the last layer's output of the policy (R or len(outputs), H) and of the reference (the same;
    empty without one). Only the policy's carries a gradient.
    """

    @staticmethod
    def forward(ctx, dims, tables, layout, outputs, x, x_ref, pair, *params):
        cos, sin_fwd, _, bias = tables
        ctx.pair, ctx.params = pair, params
        if pair is None:
            weights = _fuse(params)
            x = x[None]
        else:
            ctx.owner = pair.fill(params)
            weights = pair.layers
            x = torch.stack([x, x_ref])
        out, saved = _layers_forward(dims, x, cos, sin_fwd, bias, weights, layout, outputs)
        ctx.dims, ctx.tables, ctx.layout, ctx.saved_layers = dims, tables, layout, saved
        ref_out = out[1] if x_ref is not None else out.new_empty(0)
        ctx.mark_non_differentiable(ref_out)
        return out[0], ref_out

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_ref):
        cos, _, sin_bwd, _ = ctx.tables
        if ctx.pair is not None and ctx.pair.owner is ctx.owner:
            weights = [tuple(w[:1] for w in layer) for layer in ctx.pair.layers]
        else:  # no reference, or another forward has since written its policy into the shared buffers
            weights = _fuse(ctx.params)
        g, layer_grads = _layers_backward(ctx.dims, grad_out, cos, sin_bwd, ctx.saved_layers, weights, ctx.layout)
        ctx.saved_layers = ctx.pair = ctx.params = None
        dims = ctx.dims
        qd, kd = dims.hq * dims.d, dims.hk * dims.d
        grads = []
        for d_gain1, d_qkv, d_o, d_gain2, d_gate_up, d_down in layer_grads:
            grads += [d_gain1, *d_qkv.split([qd, kd, kd]), d_o, d_gain2, *d_gate_up.chunk(2), d_down]
        return (None, None, None, None, g, None, None, *grads)


def _last_layer(params: LlamaParams, layout: TokenLayout, outputs: Tensor | None, reference: LlamaParams | None,
                pair: _PairWeights | None):
    """Run the decoder stack over ``layout``: the last layer's output of the policy and the reference (for the
    ``outputs`` tokens only, when given)."""
    tables = _tables(params, layout, params.embed.dtype, 1 if reference is None else 2)
    x = F.embedding(layout.token_ids, params.embed, padding_idx=params.padding_idx)
    x_ref = None if reference is None else F.embedding(layout.token_ids, reference.embed.detach())
    out, ref_out = _Stack.apply(params.dims, tables, layout, outputs, x, x_ref, pair, *params.layer_tensors())
    return out, ref_out if reference is not None else None


def completion_logprobs(params: LlamaParams, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                        group_size: int = 1, reference: LlamaParams | None = None, temperature: float = 1.0,
                        with_entropy: bool = False):
    """log π(y_t | x, y_<t) of the completion tokens (B, T), 0 on padding, with gradient; the entropy of each
    next-token distribution when asked and, when ``reference`` is given (see :func:`same_shape`), the reference's
    log-probabilities, both without gradient. With ``group_size`` G > 1 the rows come in groups of G sharing a
    prompt, which runs once (:mod:`divalign.models.llama.layout`)."""
    ref_params = reference
    layout = token_layout(input_ids, attention_mask, prompt_length, group_size)
    mask = attention_mask[:, prompt_length:].bool()
    tokens = input_ids[:, prompt_length:][mask]
    # only the tokens that predict a completion token need the last layer's output
    outputs, index = torch.unique(layout.predicting[mask], return_inverse=True)
    pair = None if reference is None else pair_weights(reference)
    out, ref_out = _last_layer(params, layout, outputs, ref_params, pair)
    eps = params.dims.eps

    def full(values: Tensor) -> Tensor:
        return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)

    logp, entropy = token_logprobs(out, index, tokens, params.final_norm, params.head, eps, temperature, with_entropy)
    ref_logp = None
    if reference is not None:
        with torch.no_grad():
            ref_logp = full(token_logprobs(ref_out, index, tokens, ref_params.final_norm, ref_params.head, eps,
                                           temperature)[0])
    return full(logp), None if entropy is None else full(entropy), ref_logp


def completion_hidden(params: LlamaParams, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                      group_size: int = 1) -> Tensor:
    """Final-norm hidden states at the positions predicting each completion token, (B, T, hidden), with gradient
    (for a value head; :func:`completion_logprobs` when only log-probabilities are needed)."""
    layout = token_layout(input_ids, attention_mask, prompt_length, group_size)
    out, _ = _last_layer(params, layout, None, None, None)
    return norm.rms_norm(out[layout.predicting], params.final_norm, params.dims.eps)
