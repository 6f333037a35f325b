"""Read one backbone layer's weights in a family-neutral form, for pruning them into a side block.

Every projection is returned in nn.Linear convention: weight [out_features, in_features], bias [out]
or None (GPT-2's Conv1D weights are transposed, its fused q/k/v split).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Projection:
    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class Norm:
    weight: torch.Tensor | None
    bias: torch.Tensor | None


@dataclass
class Attention:
    q: Projection
    k: Projection
    v: Projection
    o: Projection


@dataclass
class LayerWeights:
    self_attention: Attention
    cross_attention: Attention | None
    mlp_in: Projection  # up projection (the "value" path when gated)
    mlp_gate: Projection | None  # gate projection of gated MLPs (SwiGLU, gated-GELU)
    mlp_out: Projection
    norms: list[Norm]  # in order: attention, [cross-attention], MLP


@dataclass(frozen=True)
class BlockStyle:
    """How the backbone's blocks are built: the side blocks copy it."""

    norm: str  # "layer" or "rms"
    norm_eps: float
    activation: str  # a key of ACTIVATIONS
    gated_mlp: bool
    pre_norm: bool
    causal: bool
    rope_theta: float | None  # None: no rotary embedding
    num_heads: int
    num_kv_heads: int
    head_dim: int


def _linear(module: nn.Module) -> Projection:
    if isinstance(module, nn.Linear) or hasattr(module, "qweight"):  # nn.Linear or pac.quant.QuantizedLinear
        return Projection(module.weight.detach(), None if module.bias is None else module.bias.detach())
    # transformers' Conv1D (GPT-2): weight is [in, out]
    return Projection(module.weight.detach().t(), module.bias.detach())


def _norm(module: nn.Module) -> Norm:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    return Norm(None if weight is None else weight.detach(), None if bias is None else bias.detach())


def _attention(q, k, v, o) -> Attention:
    return Attention(_linear(q), _linear(k), _linear(v), _linear(o))


def layer_weights(model_type: str, layer: nn.Module) -> LayerWeights:
    if model_type in ("bert", "roberta", "xlm-roberta", "electra"):
        s = layer.attention.self
        return LayerWeights(
            _attention(s.query, s.key, s.value, layer.attention.output.dense), None,
            _linear(layer.intermediate.dense), None, _linear(layer.output.dense),
            [_norm(layer.attention.output.LayerNorm), _norm(layer.output.LayerNorm)],
        )
    if model_type == "gpt2":
        fused = _linear(layer.attn.c_attn)
        w, b = fused.weight.chunk(3, dim=0), fused.bias.chunk(3, dim=0)
        attention = Attention(Projection(w[0], b[0]), Projection(w[1], b[1]), Projection(w[2], b[2]),
                              _linear(layer.attn.c_proj))
        return LayerWeights(attention, None, _linear(layer.mlp.c_fc), None, _linear(layer.mlp.c_proj),
                            [_norm(layer.ln_1), _norm(layer.ln_2)])
    if model_type == "t5":
        s = layer.layer[0].SelfAttention
        cross = None
        norms = [_norm(layer.layer[0].layer_norm)]
        if len(layer.layer) == 3:
            c = layer.layer[1].EncDecAttention
            cross = _attention(c.q, c.k, c.v, c.o)
            norms.append(_norm(layer.layer[1].layer_norm))
        ff = layer.layer[-1].DenseReluDense
        norms.append(_norm(layer.layer[-1].layer_norm))
        gated = hasattr(ff, "wi_0")
        mlp_in = _linear(ff.wi_1 if gated else ff.wi)
        return LayerWeights(_attention(s.q, s.k, s.v, s.o), cross, mlp_in,
                            _linear(ff.wi_0) if gated else None, _linear(ff.wo), norms)
    if model_type == "bart":
        s = layer.self_attn
        cross = None
        norms = [_norm(layer.self_attn_layer_norm)]
        if hasattr(layer, "encoder_attn"):
            c = layer.encoder_attn
            cross = _attention(c.q_proj, c.k_proj, c.v_proj, c.out_proj)
            norms.append(_norm(layer.encoder_attn_layer_norm))
        norms.append(_norm(layer.final_layer_norm))
        return LayerWeights(_attention(s.q_proj, s.k_proj, s.v_proj, s.out_proj), cross,
                            _linear(layer.fc1), None, _linear(layer.fc2), norms)
    # Llama-like decoders (llama, qwen2, mistral, ...)
    s, mlp = layer.self_attn, layer.mlp
    return LayerWeights(
        _attention(s.q_proj, s.k_proj, s.v_proj, s.o_proj), None,
        _linear(mlp.up_proj), _linear(mlp.gate_proj), _linear(mlp.down_proj),
        [_norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)],
    )


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def block_style(model_type: str, family: str, config, num_heads: int, hidden_size: int) -> BlockStyle:
    causal = family == "decoder"
    if model_type in ("bert", "roberta", "xlm-roberta", "electra"):
        return BlockStyle("layer", config.layer_norm_eps, config.hidden_act, False, False, False, None,
                          num_heads, num_heads, hidden_size // num_heads)
    if model_type == "gpt2":
        return BlockStyle("layer", config.layer_norm_epsilon, config.activation_function, False, True, True,
                          None, num_heads, num_heads, hidden_size // num_heads)
    if model_type == "t5":
        gated = config.is_gated_act
        return BlockStyle("rms", config.layer_norm_epsilon, config.dense_act_fn, gated, True, False, None,
                          num_heads, num_heads, config.d_kv)
    if model_type == "bart":
        return BlockStyle("layer", 1e-5, config.activation_function, False, False, False, None,
                          num_heads, num_heads, hidden_size // num_heads)
    head_dim = getattr(config, "head_dim", None) or hidden_size // num_heads
    return BlockStyle("rms", config.rms_norm_eps, config.hidden_act, True, True, causal, _rope_theta(config),
                      num_heads, getattr(config, "num_key_value_heads", num_heads) or num_heads, head_dim)
