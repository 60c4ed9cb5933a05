"""A functional forward pass for Llama-family models that reads the Hugging Face parameters directly.

For the small models this library trains on CPU, time goes to per-operation overhead and to how the products
are laid out, not to arithmetic: ``LlamaForCausalLM`` issues well over a hundred small operations per layer call
(views included). This module does the same computation with a few dozen, and is used in two ways:

* **scoring, and training with shared prompts or compiled** (:func:`completion_hidden`): autograd flows into the
  model's own parameters, so the optimizer, checkpoints and saved folders are the Hugging Face ones (other
  training goes through :mod:`divalign.llama_train`, a written-out backward). Q/K/V and gate/up run as one product each;
  with groups of completions sharing a prompt, the prompt runs once per group and its keys and values are
  shared by the group's completions;
* **decoding** (:class:`Decoder`): an inference-only copy of the weights with the RMSNorm gains and the
  attention scale folded into the next product, stored transposed and contiguous (``x @ Wᵀ`` with a
  pre-transposed W runs about twice as fast as ``F.linear`` at these shapes), a preallocated key-value cache
  with keys stored transposed, and grouped-query attention without repeating keys.

:func:`supports` lists what it covers; other models use the generic Hugging Face path. Tests check logits,
log-probabilities and gradients against the Hugging Face forward pass.
"""

from __future__ import annotations

import functools
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


def weights(model, fold: bool = False) -> Weights:
    """The parameters of ``model`` arranged for this module.

    ``fold=False``: differentiable views of the parameters (training). ``fold=True``: detached, contiguous
    copies with norm gains and the attention scale folded in (decoding; rebuild after each optimizer step).
    """
    cfg = model.config
    m = model.model
    hq, hk = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq

    def product(weight: Tensor, gain: Tensor | None = None, column_scale: Tensor | None = None) -> Tensor:
        w = weight.t()
        if not fold:
            return w
        w = w.detach()
        if gain is not None:
            w = gain.detach()[:, None] * w
        if column_scale is not None:
            w = w * column_scale
        return w.contiguous()

    q_scale = None
    if fold:
        q_scale = torch.ones((hq + 2 * hk) * d, dtype=m.embed_tokens.weight.dtype, device=m.embed_tokens.weight.device)
        q_scale[: hq * d] = d**-0.5
    layers = []
    for layer in m.layers:
        a, mlp = layer.self_attn, layer.mlp
        attn_gain, mlp_gain = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        layers.append(
            Layer(
                attn_gain=None if fold else attn_gain,
                wqkv=product(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), attn_gain, q_scale),
                wo=product(a.o_proj.weight),
                mlp_gain=None if fold else mlp_gain,
                w_gate_up=product(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp_gain),
                w_down=product(mlp.down_proj.weight),
            )
        )
    return Weights(
        embed=m.embed_tokens.weight.detach() if fold else m.embed_tokens.weight,
        final_gain=None if fold else m.norm.weight,
        lm_head=product(model.lm_head.weight, m.norm.weight),
        layers=layers,
        hq=hq,
        hk=hk,
        d=d,
        intermediate=cfg.intermediate_size,
        eps=cfg.rms_norm_eps,
        inv_freq=m.rotary_emb.inv_freq.float(),
        rope_scale=m.rotary_emb.attention_scaling,
        q_scaled=fold,
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


@functools.lru_cache(maxsize=8)
def rotate_half_matrix(d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The constant (D, D) matrix R with x @ R == rotate_half(x) = (−x₂, x₁); built once per shape."""
    half = d // 2
    rot = torch.zeros(d, d, dtype=dtype, device=device)
    rot[torch.arange(half) + half, torch.arange(half)] = -1.0
    rot[torch.arange(half), torch.arange(half) + half] = 1.0
    return rot


class Decoder:
    """Prefill and one-token steps over folded weights (no autograd). ``refresh`` re-reads the parameters.

    A step costs about 37 tensor operations per layer, views included. Beyond the folding of :func:`weights`,
    the rotate-half of RoPE is folded into the QKV product too (its columns are [q k | rotate_half(q k) | v], so
    RoPE is one ``addcmul``), the residual additions ride on ``addmm`` and the attention bias on ``baddbmm``.
    """

    def __init__(self, model):
        self.model = model
        self.refresh()

    def refresh(self) -> None:
        w = weights(self.model, fold=True)
        self.w = w
        qk = (w.hq + w.hk) * w.d
        rot = rotate_half_matrix(w.d, w.embed.dtype, w.embed.device)
        self.step_qkv = []
        for layer in w.layers:
            qk_cols = layer.wqkv[:, :qk]
            rotated = (qk_cols.reshape(-1, w.hq + w.hk, w.d) @ rot).reshape(qk_cols.shape)
            self.step_qkv.append(torch.cat([qk_cols, rotated, layer.wqkv[:, qk:]], dim=1).contiguous())
        self._rope_len = 0

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
        for layer, wqkv, kt, vc in zip(w.layers, self.step_qkv, state["keys_t"], state["values"]):
            h = rms_norm(x, None, w.eps) @ wqkv
            rotated = torch.addcmul(h[:, :qk] * cos, h[:, qk : 2 * qk], sin)
            kt[..., cur] = rotated[:, qd:].view(n, w.hk, w.d)
            vc[:, :, cur] = h[:, 2 * qk :].view(n, w.hk, w.d)
            q = rotated[:, :qd].reshape(n * w.hk, rep, w.d)
            scores = torch.baddbmm(bias, q, kt.view(n * w.hk, w.d, -1)[..., :length])
            att = torch.bmm(torch.softmax(scores, dim=-1), vc.view(n * w.hk, -1, w.d)[:, :length])
            x = torch.addmm(x, att.view(n, qd), layer.wo)
            gate_up = rms_norm(x, None, w.eps) @ layer.w_gate_up
            x = torch.addmm(x, F.silu(gate_up[:, : w.intermediate]) * gate_up[:, w.intermediate :], layer.w_down)
        state["cur"], state["pos"] = length, pos + 1
        return rms_norm(x, None, w.eps) @ w.lm_head
