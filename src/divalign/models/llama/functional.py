"""A functional forward pass for Llama models that reads the Hugging Face parameters directly: scoring, and
training with the compiled forward (:func:`completion_hidden`).

``LlamaForCausalLM`` issues well over a hundred small operations per layer call (views included), and for the small
models trained on CPU time goes to per-operation overhead rather than arithmetic. This module does the same
computation with a few dozen: Q/K/V and gate/up run as one product each, and with groups of completions sharing a
prompt, the prompt runs once per group and its keys and values are shared by the group's completions. Autograd
flows into the model's own parameters, so the optimizer, checkpoints and saved folders are the Hugging Face ones.
Eager training goes through :mod:`divalign.models.llama.train` instead (a written-out backward), decoding through
:mod:`divalign.models.llama.decoder`. Tests check logits, log-probabilities and gradients against the Hugging Face
forward pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divalign.models.llama.norm import rms_norm
from divalign.models.llama.weights import LlamaDims, LlamaParams, rope_table
from divalign.models.positions import causal_mask, position_ids


@dataclass
class Layer:
    """One layer's weights arranged for this module's products (differentiable views of the parameters)."""

    attn_gain: Tensor  #: RMSNorm gain before attention
    wqkv: Tensor  #: (hidden, (Hq + 2·Hkv)·D): ``x @ wqkv``
    wo: Tensor  #: (Hq·D, hidden)
    mlp_gain: Tensor
    w_gate_up: Tensor  #: (hidden, 2·intermediate)
    w_down: Tensor  #: (intermediate, hidden)


@dataclass
class Weights:
    dims: LlamaDims
    embed: Tensor
    final_gain: Tensor
    lm_head: Tensor  #: (hidden, vocab)
    layers: list[Layer]
    inv_freq: Tensor
    rope_scale: float
    padding_idx: int | None  #: the embedding's padding index (its row gets no gradient, as in nn.Embedding)


def weights(params: LlamaParams) -> Weights:
    """Differentiable views of a model's parameters arranged for this module."""
    layers = [Layer(attn_gain=p.attn_norm, wqkv=torch.cat([p.q, p.k, p.v]).t(), wo=p.o.t(), mlp_gain=p.mlp_norm,
                    w_gate_up=torch.cat([p.gate, p.up]).t(), w_down=p.down.t()) for p in params.layers]
    return Weights(params.dims, params.embed, params.final_norm, params.head.t(), layers, params.inv_freq.float(),
                   params.rope_scale, params.padding_idx)


# ----------------------------------------------------------------------------- shared layer math


def rope_tables(w: Weights, length: int, device) -> tuple[Tensor, Tensor]:
    """cos and sin of every position < ``length``, (length, D), as in LlamaRotaryEmbedding."""
    return rope_table(w.inv_freq, w.rope_scale, w.embed.dtype, length, device)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE: x·cos + rotate_half(x)·sin, with rotate_half(x) = (−x₂, x₁)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def mlp(layer: Layer, x: Tensor, eps: float) -> Tensor:
    # split/chunk rather than slicing: their backward concatenates instead of zero-filling full-size buffers
    gate, up = (rms_norm(x, layer.mlp_gain, eps) @ layer.w_gate_up).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ layer.w_down


def project_qkv(w: Weights, layer: Layer, x: Tensor, cos: Tensor, sin: Tensor):
    """x (..., hidden) → rotated q (..., Hq, D), rotated k (..., Hkv, D), v (..., Hkv, D)."""
    dims = w.dims
    qk, v = (rms_norm(x, layer.attn_gain, dims.eps) @ layer.wqkv).split([(dims.hq + dims.hk) * dims.d,
                                                                         dims.hk * dims.d], dim=-1)
    q, k = rotate(qk.unflatten(-1, (dims.hq + dims.hk, dims.d)), cos, sin).split([dims.hq, dims.hk], dim=-2)
    return q, k, v.unflatten(-1, (dims.hk, dims.d))


# ----------------------------------------------------------------------------- sequences (training, scoring)


def forward_segment(
    w: Weights,
    ids: Tensor,
    mask: Tensor,
    cos_t: Tensor,
    sin_t: Tensor,
    prefix: list[tuple[Tensor, Tensor]] | None = None,
    prefix_mask: Tensor | None = None,
    start: Tensor | None = None,
    positions: Tensor | None = None,
    allowed: Tensor | None = None,
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Run ``ids`` (n, L) through the layers; return hidden states (n, L, hidden) and each layer's (k, v).

    With ``prefix`` (per layer (k, v) of shape (n, Hkv, P, D)) the segment continues those sequences: its queries
    also see the prefix keys where ``prefix_mask`` (n, P) is 1, and positions continue from ``start`` (n,).
    ``positions`` (n, L) and ``allowed`` (n, L, L) replace the positions and causal mask derived from ``mask``
    (packed rows of several sequences).
    """
    n, length = ids.shape
    if positions is None:
        positions = position_ids(mask) if start is None else position_ids(mask) + start[:, None]
    cos, sin = cos_t[positions].unsqueeze(-2), sin_t[positions].unsqueeze(-2)  # (n, L, 1, D)
    if allowed is None:
        allowed = causal_mask(mask)
    if prefix is not None:
        allowed = torch.cat([prefix_mask.bool()[:, None, :].expand(n, length, -1), allowed], dim=-1)
    allowed = allowed.unsqueeze(1)  # (n, 1, L, P + L)
    x = F.embedding(ids, w.embed, padding_idx=w.padding_idx)
    kv = []
    for i, layer in enumerate(w.layers):
        q, k, v = project_qkv(w, layer, x, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (n, heads, L, D)
        kv.append((k, v))
        if prefix is not None:
            k = torch.cat([prefix[i][0], k], dim=2)
            v = torch.cat([prefix[i][1], v], dim=2)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=w.dims.hq != w.dims.hk)
        x = x + att.transpose(1, 2).flatten(2) @ layer.wo
        x = x + mlp(layer, x, w.dims.eps)
    return x, kv


def packed_logits(params: LlamaParams, input_ids: Tensor, positions: Tensor, allowed: Tensor) -> Tensor:
    """Logits of every position of rows with explicit positions and (n, L, L) attention mask."""
    w = weights(params)
    cos_t, sin_t = rope_tables(w, int(positions.max()) + 1, input_ids.device)
    hidden, _ = forward_segment(
        w, input_ids, torch.ones_like(positions), cos_t, sin_t, positions=positions, allowed=allowed
    )
    return rms_norm(hidden, w.final_gain, w.dims.eps) @ w.lm_head


@functools.cache
def compiled_completion_hidden():
    """:func:`completion_hidden` through ``torch.compile`` with dynamic shapes (one compiled function per process,
    specialised by torch per model's parameters and for grad / no-grad). The first calls compile (tens of seconds on CPU);
    later calls save part of the per-operation overhead. ``cpp_wrapper`` launches the compiled graph's kernels
    from C++ rather than Python."""
    return torch.compile(completion_hidden, dynamic=True, options={"cpp_wrapper": True})


def completion_hidden(
    params: LlamaParams, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, group_size: int = 1
) -> tuple[Tensor, Weights]:
    """Final-norm hidden states at the positions that predict each completion token, (B, T, hidden), for prompts
    of ``prompt_length`` columns followed by completions; with ``group_size`` G the rows come in groups of G
    sharing one prompt, run once. Also returns the weights, for :func:`logits_of`."""
    w = weights(params)
    total = input_ids.shape[1]
    cos_t, sin_t = rope_tables(w, total + 1, input_ids.device)
    if group_size == 1:
        hidden, _ = forward_segment(w, input_ids, attention_mask, cos_t, sin_t)
        hidden = hidden[:, prompt_length - 1 : -1]
    else:
        prompt_ids = input_ids[::group_size, :prompt_length]
        prompt_mask = attention_mask[::group_size, :prompt_length]
        prompt_hidden, prompt_kv = forward_segment(w, prompt_ids, prompt_mask, cos_t, sin_t)
        first = prompt_hidden[:, -1:].repeat_interleave(group_size, 0)
        completion = input_ids[:, prompt_length:-1]
        if completion.shape[1] == 0:
            hidden = first
        else:
            prefix = [(k.repeat_interleave(group_size, 0), v.repeat_interleave(group_size, 0)) for k, v in prompt_kv]
            start = prompt_mask.sum(-1).repeat_interleave(group_size, 0)
            rest, _ = forward_segment(
                w,
                completion,
                attention_mask[:, prompt_length:-1],
                cos_t,
                sin_t,
                prefix=prefix,
                prefix_mask=prompt_mask.repeat_interleave(group_size, 0),
                start=start,
            )
            hidden = torch.cat([first, rest], dim=1)
    return rms_norm(hidden, w.final_gain, w.dims.eps), w


def logits_of(hidden: Tensor, w: Weights) -> Tensor:
    return hidden @ w.lm_head
