"""The decoder for Llama models: prefill and one token step over folded copies of the Hugging Face weights, for
the sampling loop of :mod:`divalign.generation`.

Decoding a small model on CPU is bound by the number of tensor operations per token, not by arithmetic. A step
here costs 14 operations per layer (views aside):

* the weights are kept transposed and contiguous with the RMSNorm gains and the attention scale folded into the
  next product (``F.linear`` on the untransposed weight is slower at these shapes: BENCHMARKS.md, "Figures behind
  choices in the code");
* the QKV product's columns come in two halves of per-key-head blocks, [its queries | its key | its value], then
  the same block with RoPE's rotate-half applied to the queries and the key (and zeros for the value), so RoPE
  is one ``addcmul`` with tables that hold cos / sin for queries and keys and 1 / 0 for values;
* in that layout a block's key and value sit side by side and go into the cache (per key head, per slot, key
  then value) with one copy, and the queries of each key head are a view, so grouped-query attention is one
  batched product without copying or repeating anything;
* RoPE tables for every step and the attention bias are laid out at prefill, and the residual additions ride on
  ``addmm``;
* the first layer's QKV product before RoPE depends on the token alone: when the vocabulary has no more entries
  than the rows being decoded (character-level and other small vocabularies), it is computed once per
  vocabulary entry at the first step, at no more cost than that step's own product, and every step reads its
  rows (no norm and no product in that layer).

The copies are written at the first prefill after ``refresh`` (each optimizer step) and freed by ``release`` (a
trainer's rollouts collected), so that they never sit beside the training pass's memory. Tests check logits and
sampled tokens against the generic sampler on the Hugging Face model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divalign.models.llama.norm import rms_norm
from divalign.models.llama.weights import LlamaParams, rope_table
from divalign.models.positions import causal_mask, position_ids


@dataclass
class _Layer:
    qkv: Tensor  #: (hidden, 2·W), W = Hkv·(rep + 2)·D: the block layout of the module docstring
    o: Tensor  #: (Hq·D, hidden)
    gate_up: Tensor  #: (hidden, 2·intermediate)
    down: Tensor  #: (intermediate, hidden)


class LlamaDecoder:
    """``prefill``, ``step``, ``repeat`` and ``refresh`` of :class:`divalign.generation.decode.Decoder` for a Llama
    model, given its parameters."""

    def __init__(self, params: LlamaParams):
        self.params = params
        dims = params.dims
        self.hq, self.hk, self.d = dims.hq, dims.hk, dims.d
        self.rep, self.eps, self.intermediate = dims.rep, dims.eps, dims.intermediate
        self.width = self.hk * (self.rep + 2) * self.d
        self.embed = params.embed.detach()  # read live: the embedding needs no folding
        self.layers: list[_Layer] | None = None  # the folded copies: made by the first prefill that needs them
        self.head: Tensor | None = None
        self._stale = True
        self._rope_length = 0

    def _blocks(self, t: Tensor) -> Tensor:
        """(..., W) → (..., Hkv, rep + 2, D): per key head its queries, its key, its value."""
        return t.unflatten(-1, (self.hk, self.rep + 2, self.d))

    def refresh(self) -> None:
        """The model's weights changed: the next prefill rewrites the folded copies."""
        self._stale = True

    def release(self) -> None:
        """Free the folded copies (as large as the model) until the next prefill makes them again: a trainer calls
        this once its rollouts are collected, so that they do not sit beside the training pass's memory."""
        self.layers = self.head = None

    def _folded(self) -> list[_Layer]:
        """The folded copies, made or rewritten from the model's current weights when released or stale."""
        if self.layers is None:
            like = {"dtype": self.embed.dtype, "device": self.embed.device}
            hidden = self.embed.shape[1]
            self.layers = [  # qkv zeroed: the value columns of its rotated half stay zero
                _Layer(qkv=torch.zeros(hidden, 2 * self.width, **like),
                       o=torch.empty(self.hq * self.d, hidden, **like),
                       gate_up=torch.empty(hidden, 2 * self.intermediate, **like),
                       down=torch.empty(self.intermediate, hidden, **like))
                for _ in self.params.layers
            ]
            self.head = torch.empty(hidden, self.params.head.shape[0], **like)
            self._stale = True
        if self._stale:
            self._fold()
            self._stale = False
        return self.layers

    @torch.no_grad()
    def _fold(self) -> None:
        """Write the folded copies from the model's current weights."""
        params, half = self.params, self.d // 2
        for layer, p in zip(self.layers, params.layers):
            gain = p.attn_norm.view(-1, 1, 1, 1)
            plain, rotated = (self._blocks(part) for part in layer.qkv.chunk(2, dim=1))
            torch.mul(self._blocks_of(p.q.t(), self.rep), gain * self.d**-0.5, out=plain[:, :, : self.rep])
            torch.mul(self._blocks_of(p.k.t(), 1), gain, out=plain[:, :, self.rep : self.rep + 1])
            torch.mul(self._blocks_of(p.v.t(), 1), gain, out=plain[:, :, self.rep + 1 :])
            # rotate_half, (−x₂, x₁), of the query and key columns; the value's stay zero
            torch.neg(plain[:, :, : self.rep + 1, half:], out=rotated[:, :, : self.rep + 1, :half])
            rotated[:, :, : self.rep + 1, half:].copy_(plain[:, :, : self.rep + 1, :half])
            layer.o.copy_(p.o.t())
            gain = p.mlp_norm[:, None]
            torch.mul(p.gate.t(), gain, out=layer.gate_up[:, : self.intermediate])
            torch.mul(p.up.t(), gain, out=layer.gate_up[:, self.intermediate :])
            layer.down.copy_(p.down.t())
        torch.mul(params.head.t(), params.final_norm[:, None], out=self.head)

    def _blocks_of(self, weight_t: Tensor, heads_per_block: int) -> Tensor:
        """A projection's transposed weight (hidden, heads·D) → (hidden, Hkv, heads_per_block, D)."""
        return weight_t.unflatten(1, (self.hk, heads_per_block, self.d))

    def _rope(self, length: int, device) -> tuple[Tensor, Tensor]:
        """cos and sin of positions < ``length`` over the W plain columns: per block, cos / sin for the queries
        and the key, 1 / 0 for the value."""
        if length > self._rope_length:
            cos, sin = rope_table(self.params.inv_freq, self.params.rope_scale, self.embed.dtype, length, device)
            tables = []
            for table, value_part in ((cos, 1.0), (sin, 0.0)):
                block = torch.cat([table.repeat(1, self.rep + 1), torch.full_like(table, value_part)], dim=1)
                tables.append(block.repeat(1, self.hk))
            self._tables, self._rope_length = tables, length
        return self._tables

    def prefill(self, ids: Tensor, mask: Tensor, max_new_tokens: int):
        n, p = ids.shape
        hk, rep, d = self.hk, self.rep, self.d
        total = p + max_new_tokens
        cos_t, sin_t = self._rope(total + 1, ids.device)
        pos = position_ids(mask)
        cos, sin = cos_t[pos], sin_t[pos]  # (n, p, W)
        allowed = causal_mask(mask)  # (n, p, p)
        bias = torch.zeros(allowed.shape, dtype=cos.dtype, device=ids.device).masked_fill_(~allowed, float("-inf"))
        bias = bias[:, None, :, None].expand(n, hk, p, rep, p).reshape(n * hk, p * rep, p)
        x = self.embed.index_select(0, ids.flatten())  # (n·p, hidden)
        caches = []
        for layer in self._folded():
            h = rms_norm(x, None, self.eps) @ layer.qkv
            blocks = self._blocks(torch.addcmul(h[:, : self.width] * cos.flatten(0, 1), h[:, self.width :],
                                                sin.flatten(0, 1))).unflatten(0, (n, p))  # (n, p, Hkv, rep+2, D)
            cache = torch.zeros((n, hk, total, 2, d), dtype=x.dtype, device=x.device)  # per slot: key, value
            cache[:, :, :p] = blocks[:, :, :, rep:].transpose(1, 2)
            caches.append(cache)
            q = blocks[:, :, :, :rep].permute(0, 2, 1, 3, 4).reshape(n * hk, p * rep, d)
            kv = cache.view(n * hk, total, 2, d)[:, :p]
            probs = torch.softmax(torch.baddbmm(bias, q, kv[:, :, 0].transpose(1, 2)), dim=-1)
            att = torch.bmm(probs, kv[:, :, 1]).view(n, hk, p, rep, d).permute(0, 2, 1, 3, 4).reshape(n * p, -1)
            x = torch.addmm(x, att, layer.o)
            gate_up = rms_norm(x, None, self.eps) @ layer.gate_up
            x = torch.addmm(x, F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :], layer.down)
        # additive bias over cache slots for the steps: 0 where a real key sits, −inf for padding and empty slots
        key_bias = torch.full((n, hk, 1, total), float("-inf"), dtype=x.dtype, device=ids.device)
        key_bias[..., :p].masked_fill_(mask.bool()[:, None, None], 0.0)
        steps = mask.sum(-1, keepdim=True) + torch.arange(max_new_tokens, device=ids.device)  # positions (n, T)
        state = {"caches": caches, "key_bias": key_bias, "cur": p, "start": p, "cos": cos_t[steps],
                 "sin": sin_t[steps], "first_qkv": None}
        return state, rms_norm(x.view(n, p, -1)[:, -1], None, self.eps) @ self.head

    def repeat(self, state: dict, times: int) -> dict:
        state["caches"] = [c.repeat_interleave(times, 0) for c in state["caches"]]
        for key in ("key_bias", "cos", "sin"):
            state[key] = state[key].repeat_interleave(times, 0)
        return state

    def step(self, state: dict, tokens: Tensor) -> Tensor:
        n, cur = tokens.shape[0], state["cur"]
        hk, rep, d, length = self.hk, self.rep, self.d, cur + 1
        t = cur - state["start"]
        cos, sin = state["cos"][:, t], state["sin"][:, t]  # (n, W)
        state["key_bias"][..., cur] = 0.0
        bias = state["key_bias"].view(n * hk, 1, -1)[..., :length]
        x = self.embed.index_select(0, tokens)
        if state["first_qkv"] is None and self.embed.shape[0] <= n:  # the first layer's QKV per vocabulary entry
            state["first_qkv"] = rms_norm(self.embed, None, self.eps) @ self.layers[0].qkv
        for i, (layer, cache) in enumerate(zip(self.layers, state["caches"])):
            if i == 0 and state["first_qkv"] is not None:
                h = state["first_qkv"].index_select(0, tokens)
            else:
                h = rms_norm(x, None, self.eps) @ layer.qkv
            blocks = self._blocks(torch.addcmul(h[:, : self.width] * cos, h[:, self.width :], sin))
            cache[:, :, cur] = blocks[:, :, rep:]
            kv = cache.view(n * hk, -1, 2, d)[:, :length]
            scores = torch.baddbmm(bias, blocks.view(n * hk, rep + 2, d)[:, :rep], kv[:, :, 0].transpose(1, 2))
            att = torch.bmm(torch.softmax(scores, dim=-1), kv[:, :, 1])
            x = torch.addmm(x, att.view(n, -1), layer.o)
            gate_up = rms_norm(x, None, self.eps) @ layer.gate_up
            x = torch.addmm(x, F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :], layer.down)
        state["cur"] = length
        return rms_norm(x, None, self.eps) @ self.head
