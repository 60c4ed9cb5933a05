"""A functional forward pass for Llama-family models that reads the Hugging Face parameters directly.

For the small models this library trains on CPU, time goes to per-operation overhead and to how the products
are laid out, not to arithmetic: ``LlamaForCausalLM`` issues well over a hundred small operations per layer call
(views included). This module does the same computation with a few dozen, for **scoring, and training with the
compiled forward** (:func:`completion_hidden`): autograd flows into the model's own parameters, so the
optimizer, checkpoints and saved folders are the Hugging Face ones (eager training goes through
:mod:`divalign.llama_train` instead, a written-out backward; decoding through
:class:`divalign.generation.llama.LlamaSampler`, over folded copies of the weights). Q/K/V and gate/up run as one
product each; with groups of completions sharing a prompt, the prompt runs once per group and its keys and values
are shared by the group's completions.

:func:`supports` lists what it covers; other models use the generic Hugging Face path. Tests check logits,
log-probabilities and gradients against the Hugging Face forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divalign.token_layout import causal_mask, position_ids


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
    attn_gain: Tensor  #: RMSNorm gain before attention
    wqkv: Tensor  #: (hidden, (Hq + 2·Hkv)·D): ``x @ wqkv``
    wo: Tensor  #: (Hq·D, hidden)
    mlp_gain: Tensor
    w_gate_up: Tensor  #: (hidden, 2·intermediate)
    w_down: Tensor  #: (intermediate, hidden)


@dataclass
class Weights:
    embed: Tensor
    final_gain: Tensor
    lm_head: Tensor  #: (hidden, vocab)
    layers: list[Layer]
    hq: int
    hk: int
    d: int
    intermediate: int
    eps: float
    inv_freq: Tensor
    rope_scale: float
    padding_idx: int | None  #: the embedding's padding index (its row gets no gradient, as in nn.Embedding)


def weights(model) -> Weights:
    """Differentiable views of the parameters of ``model`` arranged for this module."""
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
        padding_idx=m.embed_tokens.padding_idx,
    )


# ----------------------------------------------------------------------------- shared layer math


def rms_norm(x: Tensor, gain: Tensor | None, eps: float) -> Tensor:
    """LlamaRMSNorm: x / √(mean(x²) + ε), times the gain (None: a gain folded into the next product)."""
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
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, enable_gqa=w.hq != w.hk
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
