"""A functional forward pass for Llama-family models that reads the Hugging Face parameters directly.

For the small models this library trains on CPU, time goes to per-operation overhead and to how the products
are laid out, not to arithmetic: ``LlamaForCausalLM`` issues well over a hundred small operations per layer call
(views included). This module does the same computation with a few dozen, and is used in two ways:

* **scoring, and training with the compiled forward** (:func:`completion_hidden`): autograd flows into the
  model's own parameters, so the optimizer, checkpoints and saved folders are the Hugging Face ones (eager
  training goes through :mod:`divalign.llama_train` instead, a written-out backward). Q/K/V and gate/up run as
  one product each; with groups of completions sharing a prompt, the prompt runs once per group and its keys
  and values are shared by the group's completions;
* **decoding** (:class:`Decoder`): an inference-only copy of the weights with the RMSNorm gains and the
  attention scale folded into the next product, stored transposed and contiguous (``x @ Wᵀ`` with a
  pre-transposed W runs about twice as fast as ``F.linear`` at these shapes), a preallocated key-value cache
  with keys stored transposed, and grouped-query attention without repeating keys.

:func:`supports` lists what it covers; other models use the generic Hugging Face path. Tests check logits,
log-probabilities and gradients against the Hugging Face forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def supports(model) -> bool:
    """Plain Llama: default RoPE, SiLU MLP, no biases, no tensor-parallel slicing, eager/SDPA attention."""
    cfg = getattr(model, "config", None)
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (
        getattr(cfg, "model_type", None) == "llama"
        and rope.get("rope_type", "default") == "default"
        and getattr(cfg, "hidden_act", "silu") == "silu"
        and not getattr(cfg, "attention_bias", False)
        and not getattr(cfg, "mlp_bias", False)
        and getattr(cfg, "pretraining_tp", 1) == 1
        and getattr(cfg, "_attn_implementation", "sdpa") in ("sdpa", "eager")
    )


@dataclass
class Layer:
    attn_gain: Tensor | None  #: RMSNorm gain before attention (None when folded into wqkv)
    wqkv: Tensor  #: (hidden, (Hq + 2·Hkv)·D): ``x @ wqkv``
    wo: Tensor  #: (Hq·D, hidden)
    mlp_gain: Tensor | None
    w_gate_up: Tensor  #: (hidden, 2·intermediate)
    w_down: Tensor  #: (intermediate, hidden)


@dataclass
class Weights:
    embed: Tensor
    final_gain: Tensor | None
    lm_head: Tensor  #: (hidden, vocab)
    layers: list[Layer]
    hq: int
    hk: int
    d: int
    intermediate: int
    eps: float
    inv_freq: Tensor
    rope_scale: float
    q_scaled: bool  #: whether 1/√D is folded into the query columns
    padding_idx: int | None  #: the embedding's padding index (its row gets no gradient, as in nn.Embedding)


def weights(model) -> Weights:
    """Differentiable views of the parameters of ``model`` arranged for this module (the decoder keeps folded
    copies, :class:`Decoder`)."""
    cfg = model.config
    m = model.model
    hq, hk = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq
    layers = []
    for layer in m.layers:
        a, mlp = layer.self_attn, layer.mlp
        layers.append(
            Layer(
                attn_gain=layer.input_layernorm.weight,
                wqkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t(),
                wo=a.o_proj.weight.t(),
                mlp_gain=layer.post_attention_layernorm.weight,
                w_gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t(),
                w_down=mlp.down_proj.weight.t(),
            )
        )
    return Weights(
        embed=m.embed_tokens.weight,
        final_gain=m.norm.weight,
        lm_head=model.lm_head.weight.t(),
        layers=layers,
        hq=hq,
        hk=hk,
        d=d,
        intermediate=cfg.intermediate_size,
        eps=cfg.rms_norm_eps,
        inv_freq=m.rotary_emb.inv_freq.float(),
        rope_scale=m.rotary_emb.attention_scaling,
        q_scaled=False,
        padding_idx=m.embed_tokens.padding_idx,
    )


# ----------------------------------------------------------------------------- shared layer math


def rms_norm(x: Tensor, gain: Tensor | None, eps: float) -> Tensor:
    """LlamaRMSNorm: x / √(mean(x²) + ε), times the gain (unless it was folded into the next product)."""
    return F.rms_norm(x, (x.shape[-1],), gain, eps)


def rope_tables(w: Weights, length: int, device) -> tuple[Tensor, Tensor]:
    """cos and sin of every position < ``length``, (length, D), as in LlamaRotaryEmbedding."""
    return rope_table(w.inv_freq, w.rope_scale, w.embed.dtype, length, device)


def rope_table(inv_freq: Tensor, scale: float, dtype: torch.dtype, length: int, device) -> tuple[Tensor, Tensor]:
    """:func:`rope_tables` from the rotary embedding's inverse frequencies and attention scaling."""
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq.float().to(device))
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


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
    qk, v = (rms_norm(x, layer.attn_gain, w.eps) @ layer.wqkv).split([(w.hq + w.hk) * w.d, w.hk * w.d], dim=-1)
    q, k = rotate(qk.unflatten(-1, (w.hq + w.hk, w.d)), cos, sin).split([w.hq, w.hk], dim=-2)
    return q, k, v.unflatten(-1, (w.hk, w.d))


# ----------------------------------------------------------------------------- sequences (training, prefill)


def _positions(mask: Tensor, start: Tensor | None = None) -> Tensor:
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos if start is None else pos + start[:, None]


def causal_mask(mask: Tensor) -> Tensor:
    """(n, L) padding mask → (n, L, L) causal attention mask; a padded query sees itself so no row is empty."""
    length = mask.shape[1]
    allowed = torch.ones((length, length), dtype=torch.bool, device=mask.device).tril() & mask.bool()[:, None, :]
    return allowed | torch.eye(length, dtype=torch.bool, device=mask.device)


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
    pos = _positions(mask, start) if positions is None else positions
    cos, sin = cos_t[pos].unsqueeze(-2), sin_t[pos].unsqueeze(-2)  # (n, L, 1, D)
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
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, enable_gqa=w.hq != w.hk, scale=1.0 if w.q_scaled else None
        )
        x = x + att.transpose(1, 2).flatten(2) @ layer.wo
        x = x + mlp(layer, x, w.eps)
    return x, kv


def packed_logits(model, input_ids: Tensor, positions: Tensor, allowed: Tensor) -> Tensor:
    """Logits of every position of rows with explicit positions and (n, L, L) attention mask."""
    w = weights(model)
    cos_t, sin_t = rope_tables(w, int(positions.max()) + 1, input_ids.device)
    hidden, _ = forward_segment(
        w, input_ids, torch.ones_like(positions), cos_t, sin_t, positions=positions, allowed=allowed
    )
    return rms_norm(hidden, w.final_gain, w.eps) @ w.lm_head


_compiled = {}


def enable_compile(enabled: bool = True) -> None:
    """Run the training and scoring forward (:func:`completion_hidden`) through ``torch.compile`` with dynamic
    shapes, for this process (``enabled=False`` goes back to eager). The first calls compile (tens of seconds on
    CPU, again for each model and for grad / no-grad); later calls save part of the per-operation overhead.
    Decoding stays eager."""
    if not enabled:
        _compiled.pop("completion_hidden", None)
    elif "completion_hidden" not in _compiled:
        # cpp_wrapper: the compiled graph launches its kernels from C++ rather than Python (about 5 % of a DPO
        # step of the speed benchmark, benchmarks/dpo_profile.py --compile)
        _compiled["completion_hidden"] = torch.compile(_completion_hidden, dynamic=True, options={"cpp_wrapper": True})


def compiled() -> bool:
    """Whether :func:`enable_compile` is on in this process."""
    return "completion_hidden" in _compiled


def completion_hidden(
    model, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, group_size: int = 1
) -> tuple[Tensor, Weights]:
    """See :func:`_completion_hidden`; compiled after :func:`enable_compile`."""
    return _compiled.get("completion_hidden", _completion_hidden)(model, input_ids, attention_mask, prompt_length,
                                                                   group_size)


def _completion_hidden(
    model, input_ids: Tensor, attention_mask: Tensor, prompt_length: int, group_size: int = 1
) -> tuple[Tensor, Weights]:
    """Final-norm hidden states at the positions that predict each completion token, (B, T, hidden), for prompts
    of ``prompt_length`` columns followed by completions; with ``group_size`` G the rows come in groups of G
    sharing one prompt, run once. Also returns the weights, for :func:`logits_of`."""
    w = weights(model)
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
    return rms_norm(hidden, w.final_gain, w.eps), w


def logits_of(hidden: Tensor, w: Weights) -> Tensor:
    return hidden @ w.lm_head


# ----------------------------------------------------------------------------- decoding


class Decoder:
    """Prefill and one-token steps over folded weights (no autograd). ``refresh`` re-reads the parameters.

    A step costs about 37 tensor operations per layer, views included. The weights are kept transposed and
    contiguous with the RMSNorm gains and the attention scale folded in, and the rotate-half of RoPE is folded
    into the QKV product too (its columns are [q k | v | rotate_half(q k)], so RoPE is one ``addcmul``); the
    residual additions ride on ``addmm`` and the attention bias on ``baddbmm``. ``refresh`` writes all of this
    into buffers allocated once, one pass per weight.
    """

    def __init__(self, model):
        self.model = model
        with torch.no_grad():
            w = weights(model)
        hidden, qkv_cols = w.embed.shape[1], (w.hq + 2 * w.hk) * w.d
        qk_cols = (w.hq + w.hk) * w.d
        like = {"dtype": w.embed.dtype, "device": w.embed.device}
        self._qkv = [torch.empty(hidden, qkv_cols + qk_cols, **like) for _ in w.layers]
        layers = [
            Layer(attn_gain=None, wqkv=qkv[:, :qkv_cols], wo=torch.empty(layer.wo.shape, **like), mlp_gain=None,
                  w_gate_up=torch.empty(layer.w_gate_up.shape, **like), w_down=torch.empty(layer.w_down.shape, **like))
            for qkv, layer in zip(self._qkv, w.layers)
        ]
        self.w = Weights(embed=w.embed.detach(), final_gain=None, lm_head=torch.empty(w.lm_head.shape, **like),
                         layers=layers, hq=w.hq, hk=w.hk, d=w.d, intermediate=w.intermediate, eps=w.eps,
                         inv_freq=w.inv_freq, rope_scale=w.rope_scale, q_scaled=True, padding_idx=w.padding_idx)
        self._rope_len = 0
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        w, m = self.w, self.model.model
        qd, kd, half = w.hq * w.d, w.hk * w.d, w.d // 2
        for layer, qkv, module in zip(w.layers, self._qkv, m.layers):
            a, mlp = module.self_attn, module.mlp
            gain = module.input_layernorm.weight[:, None]
            torch.mul(a.q_proj.weight.t(), gain * w.d**-0.5, out=qkv[:, :qd])
            torch.mul(a.k_proj.weight.t(), gain, out=qkv[:, qd : qd + kd])
            torch.mul(a.v_proj.weight.t(), gain, out=qkv[:, qd + kd : qd + 2 * kd])
            # rotate_half per head, (−x₂, x₁), of the q and k columns
            source = qkv[:, : qd + kd].unflatten(1, (w.hq + w.hk, 2, half))
            rotated = qkv[:, qd + 2 * kd :].unflatten(1, (w.hq + w.hk, 2, half))
            torch.neg(source[:, :, 1], out=rotated[:, :, 0])
            rotated[:, :, 1].copy_(source[:, :, 0])
            layer.wo.copy_(a.o_proj.weight.t())
            gain = module.post_attention_layernorm.weight[:, None]
            torch.mul(mlp.gate_proj.weight.t(), gain, out=layer.w_gate_up[:, : w.intermediate])
            torch.mul(mlp.up_proj.weight.t(), gain, out=layer.w_gate_up[:, w.intermediate :])
            layer.w_down.copy_(mlp.down_proj.weight.t())
        torch.mul(self.model.lm_head.weight.t(), m.norm.weight[:, None], out=w.lm_head)

    def _rope(self, length: int, device) -> tuple[Tensor, Tensor]:
        if length > self._rope_len:
            self._cos, self._sin = rope_tables(self.w, length, device)
            self._rope_len = length
        return self._cos, self._sin

    def prefill(self, ids: Tensor, mask: Tensor, max_new_tokens: int) -> tuple[dict, Tensor]:
        w = self.w
        n, p = ids.shape
        total = p + max_new_tokens
        cos_t, sin_t = self._rope(total + 1, ids.device)
        hidden, kv = forward_segment(w, ids, mask, cos_t, sin_t)
        keys_t, values = [], []
        for k, v in kv:  # keys stored transposed (n, Hkv, D, total) so scores need no copy
            kt = torch.zeros((n, w.hk, w.d, total), dtype=k.dtype, device=k.device)
            kt[..., :p] = k.transpose(-1, -2)
            vc = torch.zeros((n, w.hk, total, w.d), dtype=v.dtype, device=v.device)
            vc[:, :, :p] = v
            keys_t.append(kt)
            values.append(vc)
        # Additive attention bias over cache slots: 0 where a real key sits, -inf for padding and empty slots.
        key_bias = torch.full((n, 1, total), float("-inf"), dtype=w.embed.dtype, device=ids.device)
        key_bias[:, 0, :p].masked_fill_(mask.bool(), 0.0)
        heads = w.hq + w.hk
        state = {
            "keys_t": keys_t,
            "values": values,
            "key_bias": key_bias,
            "cur": p,
            "pos": mask.sum(-1),
            "cos": cos_t.repeat(1, heads),
            "sin": sin_t.repeat(1, heads),
        }
        return state, rms_norm(hidden[:, -1], None, w.eps) @ w.lm_head

    def repeat(self, state: dict, times: int) -> dict:
        for key in ("keys_t", "values"):
            state[key] = [t.repeat_interleave(times, 0) for t in state[key]]
        for key in ("key_bias", "pos"):
            state[key] = state[key].repeat_interleave(times, 0)
        return state

    def step(self, state: dict, tokens: Tensor) -> Tensor:
        w = self.w
        n, cur, pos = tokens.shape[0], state["cur"], state["pos"]
        length, rep = cur + 1, w.hq // w.hk
        qk, qd = (w.hq + w.hk) * w.d, w.hq * w.d
        cos, sin = state["cos"][pos], state["sin"][pos]  # (n, (Hq + Hkv)·D)
        state["key_bias"][:, :, cur] = 0.0
        bias = state["key_bias"][:, :, :length].repeat_interleave(w.hk, 0)  # (n·Hkv, 1, L)
        x = F.embedding(tokens, w.embed)
        for layer, wqkv, kt, vc in zip(w.layers, self._qkv, state["keys_t"], state["values"]):
            h = rms_norm(x, None, w.eps) @ wqkv  # [q k | v | rotate_half(q k)]
            rotated = torch.addcmul(h[:, :qk] * cos, h[:, -qk:], sin)
            kt[..., cur] = rotated[:, qd:].view(n, w.hk, w.d)
            vc[:, :, cur] = h[:, qk : qk + w.hk * w.d].view(n, w.hk, w.d)
            q = rotated[:, :qd].reshape(n * w.hk, rep, w.d)
            scores = torch.baddbmm(bias, q, kt.view(n * w.hk, w.d, -1)[..., :length])
            att = torch.bmm(torch.softmax(scores, dim=-1), vc.view(n * w.hk, -1, w.d)[:, :length])
            x = torch.addmm(x, att.view(n, qd), layer.wo)
            gate_up = rms_norm(x, None, w.eps) @ layer.w_gate_up
            x = torch.addmm(x, F.silu(gate_up[:, : w.intermediate]) * gate_up[:, w.intermediate :], layer.w_down)
        state["cur"], state["pos"] = length, pos + 1
        return rms_norm(x, None, w.eps) @ w.lm_head
