"""Initialise a side network by structural pruning of the backbone's weights (paper §6.1, LST).

One set of r hidden channels (the most important across all layers) is kept everywhere, so every
Down_i starts as a channel selection and every side block as a pruned copy of its backbone layer:
attention keeps the most important heads and, inside each, the most important dimensions (rotary
dimensions in their cos/sin pairs, with their own frequencies); the MLP keeps its most important
inner channels. Importance is the L2 norm of the weights that read or write a channel.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pac.side.network import SideNetwork
from pac.side.weights import Attention, LayerWeights, Norm, Projection, layer_weights


def _topk_sorted(scores: torch.Tensor, count: int) -> torch.Tensor:
    return scores.topk(count).indices.sort().values


def hidden_importance(weights: Iterable[LayerWeights], hidden: int) -> torch.Tensor:
    score = torch.zeros(hidden)
    for lw in weights:
        attentions = [lw.self_attention] + ([lw.cross_attention] if lw.cross_attention else [])
        readers = [p for a in attentions for p in (a.q, a.k, a.v)] + [lw.mlp_in]
        readers += [lw.mlp_gate] if lw.mlp_gate else []
        for projection in readers:
            if projection.weight.shape[1] == hidden:
                score += projection.weight.float().pow(2).sum(0)
        for projection in [a.o for a in attentions] + [lw.mlp_out]:
            score += projection.weight.float().pow(2).sum(1)
    return score


def _copy(linear: torch.nn.Linear, projection: Projection, rows: torch.Tensor, cols: torch.Tensor) -> None:
    linear.weight.copy_(projection.weight[rows][:, cols])
    if linear.bias is not None and projection.bias is not None:
        linear.bias.copy_(projection.bias[rows])


def _copy_norm(norm: torch.nn.Module, source: Norm, channels: torch.Tensor) -> None:
    if source.weight is not None and getattr(norm, "weight", None) is not None:
        norm.weight.copy_(source.weight[channels])
    if source.bias is not None and getattr(norm, "bias", None) is not None:
        norm.bias.copy_(source.bias[channels])


def _prune_attention(side, source: Attention, style, channels: torch.Tensor, rope: bool) -> None:
    hd, n_heads, n_kv = style.head_dim, style.num_heads, style.num_kv_heads
    group = n_heads // n_kv
    rows = lambda p, h: p.weight[h * hd:(h + 1) * hd].float()  # noqa: E731
    head_score = torch.tensor([
        rows(source.q, h).norm() + rows(source.k, h // group).norm() + rows(source.v, h // group).norm()
        + source.o.weight[:, h * hd:(h + 1) * hd].float().norm()
        for h in range(n_heads)
    ])
    heads = _topk_sorted(head_score, side.heads)
    q_rows, k_rows, v_rows, freqs = [], [], [], []
    for h in heads.tolist():
        g = h // group
        qk = rows(source.q, h).norm(dim=1) * rows(source.k, g).norm(dim=1)
        if rope:
            pairs = _topk_sorted(qk[: hd // 2] + qk[hd // 2:], side.head_dim // 2)
            dims = torch.cat((pairs, pairs + hd // 2))
            freqs.append(style.rope_theta ** (-2.0 * pairs.double() / hd))
        else:
            dims = _topk_sorted(qk, side.head_dim)
        vo = rows(source.v, g).norm(dim=1) * source.o.weight[:, h * hd:(h + 1) * hd].float().norm(dim=0)
        v_dims = _topk_sorted(vo, side.head_dim)
        q_rows.append(h * hd + dims)
        k_rows.append(g * hd + dims)
        v_rows.append((h * hd + v_dims, g * hd + v_dims))
    _copy(side.q, source.q, torch.cat(q_rows), channels)
    _copy(side.k, source.k, torch.cat(k_rows), channels)
    _copy(side.v, source.v, torch.cat([v for _, v in v_rows]), channels)
    o_cols = torch.cat([o for o, _ in v_rows])
    side.o.weight.copy_(source.o.weight[channels][:, o_cols])
    if side.o.bias is not None and source.o.bias is not None:
        side.o.bias.copy_(source.o.bias[channels])
    if rope:
        side.inv_freq.copy_(torch.stack(freqs).to(side.inv_freq.dtype))


def _prune_block(block, lw: LayerWeights, style, channels: torch.Tensor) -> None:
    eye = torch.zeros_like(block.down.weight)
    eye[torch.arange(len(channels)), channels] = 1.0
    block.down.weight.copy_(eye)
    _prune_attention(block.attention, lw.self_attention, style, channels, style.rope_theta is not None)
    if block.cross is not None and lw.cross_attention is not None:
        _prune_attention(block.cross, lw.cross_attention, style, channels, rope=False)
    score = lw.mlp_in.weight[:, channels].float().norm(dim=1) * lw.mlp_out.weight[channels].float().norm(dim=0)
    if lw.mlp_gate is not None:
        score = score * lw.mlp_gate.weight[:, channels].float().norm(dim=1)
    inner = _topk_sorted(score, block.mlp.up.out_features)
    _copy(block.mlp.up, lw.mlp_in, inner, channels)
    if block.mlp.gate is not None:
        _copy(block.mlp.gate, lw.mlp_gate, inner, channels)
    block.mlp.down.weight.copy_(lw.mlp_out.weight[channels][:, inner])
    if block.mlp.down.bias is not None and lw.mlp_out.bias is not None:
        block.mlp.down.bias.copy_(lw.mlp_out.bias[channels])
    for norm, source in zip(block.norms, lw.norms, strict=True):
        _copy_norm(norm, source, channels)


def final_norm_module(backbone):
    model = backbone.model
    for path in ("model.norm", "transformer.ln_f", "decoder.final_layer_norm", "norm"):
        module = model
        try:
            for part in path.split("."):
                module = getattr(module, part)
        except AttributeError:
            continue
        return module
    return None


@torch.no_grad()
def init_by_pruning(side: SideNetwork, backbone) -> SideNetwork:
    """Every layer is read in turn through `backbone.open_layer` (a model whose layers stay on meta holds one
    at a time), twice: once for the channels' importance, once for its side block."""
    spec = side.spec

    def every_layer():
        for stack in backbone.stacks:
            for layer in stack:
                with backbone.open_layer(layer):
                    yield layer_weights(backbone.model_type, layer)

    channels = _topk_sorted(hidden_importance(every_layer(), spec.hidden_size), spec.width)
    for entry in side.entry:
        entry.weight.zero_()
        entry.weight[torch.arange(spec.width), channels] = 1.0
    for stack_index, blocks in enumerate(side.stacks):
        for layer, block in zip(spec.taps[stack_index], blocks, strict=True):
            with backbone.open_layer(backbone.stacks[stack_index][layer - 1]) as module:
                _prune_block(block, layer_weights(backbone.model_type, module), spec.style, channels)
    final = final_norm_module(backbone)
    if final is not None and not isinstance(side.final_norm, torch.nn.Identity):
        _copy_norm(side.final_norm, Norm(getattr(final, "weight", None), getattr(final, "bias", None)), channels)
    return side
