"""A lean decoder for Llama-family models that reads the Hugging Face weights directly.

For small models on CPU, sampling time is dominated by per-operation overhead and by how the matrix
products are laid out, not by arithmetic: the module stack of ``LlamaForCausalLM`` issues a few hundred small
operations per generated token. This decoder does the same computation in about fifteen operations per layer:

* the RMSNorm gains are folded into the next projection, whose weights are stored transposed and contiguous
  (``x @ Wᵀ`` with a pre-transposed W runs about twice as fast as ``F.linear`` at these shapes);
* Q, K and V are one product, and so are the MLP gate and up projections;
* RoPE's rotate-half is a product with a fixed signed permutation; cos/sin come from a table;
* keys and values go into a preallocated cache; grouped-query attention runs without repeating keys.

It is an inference path only (no autograd). ``refresh`` rebuilds the fused weights from the model's current
parameters; the trainer calls it after every optimizer step. ``supports`` lists what it covers; any other model
uses :class:`~divalign.generation.decode.HFSampler`. Tests check that its logits equal the Hugging Face
forward pass and that both samplers draw the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divalign.generation.decode import Sampler
from divalign.models import position_ids


def supports(model) -> bool:
    """Plain Llama: default RoPE, SiLU MLP, no biases, no tensor-parallel slicing."""
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (
        getattr(cfg, "model_type", None) == "llama"
        and rope.get("rope_type", "default") == "default"
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "attention_bias", False)
        and not getattr(cfg, "mlp_bias", False)
        and getattr(cfg, "pretraining_tp", 1) == 1
    )


@dataclass
class _Layer:
    wqkv: Tensor  #: (hidden, (Hq + 2·Hkv)·D), attention-norm gain folded in
    wo: Tensor  #: (Hq·D, hidden)
    w_gate_up: Tensor  #: (hidden, 2·intermediate), MLP-norm gain folded in
    w_down: Tensor  #: (intermediate, hidden)


def _folded(weight: Tensor, gain: Tensor | None = None) -> Tensor:
    """Wᵀ (in, out), contiguous, with an RMSNorm gain multiplied into its rows."""
    w = weight.detach().t()
    if gain is not None:
        w = gain.detach()[:, None] * w
    return w.contiguous()


class LlamaSampler(Sampler):
    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        cfg = model.config
        self.hq = cfg.num_attention_heads
        self.hk = cfg.num_key_value_heads
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.intermediate = cfg.intermediate_size
        rotary = model.model.rotary_emb
        self._inv_freq = rotary.inv_freq.float()
        self._rope_scale = rotary.attention_scaling
        self._rope_len = 0
        self.refresh()

    def refresh(self) -> None:
        m = self.model.model
        self.embed = m.embed_tokens.weight.detach()
        self.lm_head = _folded(self.model.lm_head.weight, m.norm.weight)
        self.layers = [
            _Layer(
                wqkv=_folded(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), layer.input_layernorm.weight),
                wo=_folded(a.o_proj.weight),
                w_gate_up=_folded(torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
                                  layer.post_attention_layernorm.weight),
                w_down=_folded(layer.mlp.down_proj.weight),
            )
            for layer in m.layers
            for a in [layer.self_attn]
        ]
        d, h = self.d, self.d // 2
        rot = torch.zeros(d, d, dtype=self.embed.dtype, device=self.embed.device)
        rot[torch.arange(h) + h, torch.arange(h)] = -1.0  # rotate_half(x) == x @ rot
        rot[torch.arange(h), torch.arange(h) + h] = 1.0
        self._rot = rot

    def _rope_tables(self, length: int) -> tuple[Tensor, Tensor]:
        if length > self._rope_len:
            t = torch.arange(length, dtype=torch.float32, device=self._inv_freq.device)
            freqs = torch.outer(t, self._inv_freq)
            emb = torch.cat([freqs, freqs], dim=-1)
            self._cos = (emb.cos() * self._rope_scale).to(self.embed.dtype)
            self._sin = (emb.sin() * self._rope_scale).to(self.embed.dtype)
            self._rope_len = length
        return self._cos, self._sin

    def _norm(self, x: Tensor) -> Tensor:
        return x * (x * x).mean(-1, keepdim=True).add_(self.eps).rsqrt_()

    def _qkv(self, layer: _Layer, x: Tensor, cos: Tensor, sin: Tensor):
        """x: (rows, hidden) → rotated q (rows, Hq, D), k (rows, Hkv, D), v (rows, Hkv, D)."""
        hq, hk, d = self.hq, self.hk, self.d
        qkv = (self._norm(x) @ layer.wqkv).view(x.shape[0], hq + 2 * hk, d)
        qk = qkv[:, : hq + hk]
        qk = qk * cos + (qk @ self._rot) * sin
        return qk[:, :hq], qk[:, hq:], qkv[:, hq + hk:]

    def _mlp(self, layer: _Layer, x: Tensor) -> Tensor:
        gate_up = self._norm(x) @ layer.w_gate_up
        return (F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate:]) @ layer.w_down

    def prefill(self, ids, mask, max_new_tokens):
        n, p = ids.shape
        total = p + max_new_tokens
        pos = position_ids(mask)
        cos_t, sin_t = self._rope_tables(int(pos.max()) + max_new_tokens + 1)
        flat_pos = pos.reshape(-1)
        cos, sin = cos_t[flat_pos].unsqueeze(1), sin_t[flat_pos].unsqueeze(1)
        # Additive attention bias over cache slots: 0 where a real key sits, -inf for padding and empty slots.
        key_bias = torch.full((n, total), float("-inf"), dtype=self.embed.dtype, device=ids.device)
        key_bias[:, :p].masked_fill_(mask.bool(), 0.0)
        # Causal and padding mask; a padded query row may see itself so no row is empty (its output is unused).
        causal = torch.ones((p, p), dtype=torch.bool, device=ids.device).tril()
        allowed = ((causal & mask.bool()[:, None, :]) | torch.eye(p, dtype=torch.bool, device=ids.device))[:, None]
        rep = self.hq // self.hk
        cache = []
        x = F.embedding(ids.reshape(-1), self.embed)
        for layer in self.layers:
            q, k, v = self._qkv(layer, x, cos, sin)
            q = q.view(n, p, self.hq, self.d).transpose(1, 2)
            k = k.view(n, p, self.hk, self.d).transpose(1, 2)
            v = v.view(n, p, self.hk, self.d).transpose(1, 2)
            kc = torch.empty((n, self.hk, total, self.d), dtype=x.dtype, device=x.device)
            vc = torch.empty_like(kc)
            kc[:, :, :p] = k
            vc[:, :, :p] = v
            cache.append((kc, vc))
            att = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                 attn_mask=allowed)
            x = x + att.transpose(1, 2).reshape(n * p, -1) @ layer.wo
            x = x + self._mlp(layer, x)
        last = x.view(n, p, -1)[:, -1]
        state = {"cache": cache, "key_bias": key_bias, "cur": p, "pos": pos[:, -1] + 1, "cos": cos_t, "sin": sin_t}
        return state, self._norm(last) @ self.lm_head

    def repeat(self, state, times):
        state["cache"] = [(k.repeat_interleave(times, 0), v.repeat_interleave(times, 0)) for k, v in state["cache"]]
        state["key_bias"] = state["key_bias"].repeat_interleave(times, 0)
        state["pos"] = state["pos"].repeat_interleave(times, 0)
        return state

    def step(self, state, tokens):
        n, cur, pos = tokens.shape[0], state["cur"], state["pos"]
        cos, sin = state["cos"][pos].unsqueeze(1), state["sin"][pos].unsqueeze(1)
        state["key_bias"][:, cur] = 0.0
        bias = state["key_bias"][:, None, None, : cur + 1]  # (N, 1, 1, L)
        rep, scale = self.hq // self.hk, self.d ** -0.5
        x = F.embedding(tokens, self.embed)
        for layer, (kc, vc) in zip(self.layers, state["cache"]):
            q, k, v = self._qkv(layer, x, cos, sin)
            kc[:, :, cur] = k
            vc[:, :, cur] = v
            qg = q.reshape(n, self.hk, rep, self.d)
            scores = torch.matmul(qg, kc[:, :, : cur + 1].transpose(-1, -2)).mul_(scale).add_(bias)
            att = torch.matmul(torch.softmax(scores, dim=-1), vc[:, :, : cur + 1])  # (N, Hkv, rep, D)
            x = x + att.reshape(n, -1) @ layer.wo
            x = x + self._mlp(layer, x)
        state["cur"], state["pos"] = cur + 1, pos + 1
        return self._norm(x) @ self.lm_head
