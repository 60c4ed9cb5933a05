"""The one reader of a Hugging Face Llama model: which models the fast path covers, their sizes, and their
parameters by role (:func:`llama_params`, read once per model by :func:`divalign.models.runtime.configure`; every
kernel of the fast path takes what it returns, never the Hugging Face model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
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


@dataclass(frozen=True)
class LlamaDims:
    """The sizes the kernels need."""

    hq: int  #: query heads
    hk: int  #: key/value heads
    d: int  #: head size
    intermediate: int  #: MLP width
    eps: float  #: RMSNorm epsilon

    @property
    def rep(self) -> int:
        """Query heads per key head."""
        return self.hq // self.hk

    @property
    def scale(self) -> float:
        """Attention scale 1/√D."""
        return self.d**-0.5

    @staticmethod
    def of(model) -> LlamaDims:
        cfg = model.config
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return LlamaDims(cfg.num_attention_heads, cfg.num_key_value_heads, d, cfg.intermediate_size, cfg.rms_norm_eps)


@dataclass
class LayerParams:
    """One decoder layer's parameters, in the modules' own layout ((out, in) for projections)."""

    attn_norm: Tensor
    q: Tensor
    k: Tensor
    v: Tensor
    o: Tensor
    mlp_norm: Tensor
    gate: Tensor
    up: Tensor
    down: Tensor

    def tensors(self) -> list[Tensor]:
        """All nine, in the order above."""
        return [self.attn_norm, self.q, self.k, self.v, self.o, self.mlp_norm, self.gate, self.up, self.down]


@dataclass(eq=False)
class LlamaParams:
    """A Llama model's parameters by role, read once per model (:func:`divalign.models.runtime.configure`); the
    fast path's kernels take this, never the Hugging Face model."""

    dims: LlamaDims
    embed: Tensor  #: (V, H)
    layers: list[LayerParams]
    final_norm: Tensor  #: (H,)
    head: Tensor  #: (V, H), the output head's weight (may be the embedding itself when tied)
    rotary: torch.nn.Module  #: the rotary embedding (caches of RoPE tables are kept per this module)
    padding_idx: int | None  #: the embedding's padding index (its row gets no gradient, as in nn.Embedding)

    @property
    def inv_freq(self) -> Tensor:
        """RoPE inverse frequencies."""
        return self.rotary.inv_freq

    @property
    def rope_scale(self) -> float:
        """RoPE attention scaling."""
        return self.rotary.attention_scaling

    def layer_tensors(self) -> list[Tensor]:
        """Every decoder layer's :meth:`LayerParams.tensors`, concatenated."""
        return [t for layer in self.layers for t in layer.tensors()]

    def shape_key(self) -> tuple:
        """Equal for two models whose parameters have the same shapes and dtype (they can run stacked)."""
        return (self.dims, len(self.layers), self.embed.shape[1], self.embed.dtype)


def llama_params(model) -> LlamaParams:
    """The parameters of a Hugging Face ``LlamaForCausalLM`` by role (the live tensors, with their gradients)."""
    m = model.model
    layers = [LayerParams(layer.input_layernorm.weight, layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight,
                          layer.self_attn.v_proj.weight, layer.self_attn.o_proj.weight,
                          layer.post_attention_layernorm.weight, layer.mlp.gate_proj.weight,
                          layer.mlp.up_proj.weight, layer.mlp.down_proj.weight) for layer in m.layers]
    return LlamaParams(LlamaDims.of(model), m.embed_tokens.weight, layers, m.norm.weight, model.lm_head.weight,
                       m.rotary_emb, m.embed_tokens.padding_idx)


def rope_table(inv_freq: Tensor, scale: float, dtype: torch.dtype, length: int, device) -> tuple[Tensor, Tensor]:
    """cos and sin of every position < ``length``, (length, D), as in LlamaRotaryEmbedding."""
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq.float().to(device))
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)
