"""A frozen encoder layer that computes its real tokens only, not the padding.

A mini-batch pads every sample to its longest one (MRPC: 54 real tokens of 72-77 per sample at batches of
8-16), and the model's own layer computes every padded position too, although nothing reads them: the
attention masks them out as keys, the cache keeps each sample's real positions only
(`pac.train.cached.record_tensors`) and the heads pool under the mask. For the BERT family's layers
(BERT, RoBERTa, XLM-RoBERTa, ELECTRA) `unpad_layers` swaps each layer's forward for one that gathers the
real tokens into one [tokens, width] matrix for the projections and the feed-forward block, and lays
them out padded only for the attention itself (whose own cost is small at these lengths). The real
positions come out as the model's own forward computes them (the same modules on the same rows); the
padded positions hand their input through unchanged.

It applies where the layer gets a 4-dimensional mask with padding in it, runs in eval mode, with no
cross-attention or key/value cache, and the model attends with SDPA; anything else takes the model's own
forward. docs/runtime.md, "Padding".
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

UNPADDED_TYPES = {"bert", "roberta", "xlm-roberta", "electra"}


def unpad_layers(model_type: str, layers: list[nn.Module]) -> bool:
    """Give each of `layers` the forward that skips padding, where it is a BERT-family layer attending with
    SDPA; returns whether it did (for all of them)."""
    if model_type not in UNPADDED_TYPES or not layers or not all(_fits(layer) for layer in layers):
        return False
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)
    return True


def _fits(layer: nn.Module) -> bool:
    attention = getattr(getattr(layer, "attention", None), "self", None)
    config = getattr(attention, "config", None)
    return (attention is not None and hasattr(layer, "feed_forward_chunk") and hasattr(layer.attention, "output")
            and getattr(config, "_attn_implementation", None) == "sdpa"
            and all(hasattr(attention, name) for name in ("query", "key", "value", "scaling")))


def real_positions(mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] bool: the positions some query attends to, from a [batch, 1, seq, seq] layer mask (bool,
    True attends; or additive, 0 attends)."""
    allowed = mask if mask.dtype == torch.bool else mask == 0
    return allowed.any(dim=-2)[:, 0]


def _forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
    own = type(self).forward
    if (attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[1] != 1 or self.training
            or any(a is not None for a in args) or kwargs.get("encoder_hidden_states") is not None
            or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None):
        return own(self, hidden_states, attention_mask, *args, **kwargs)
    real = real_positions(attention_mask)
    if bool(real.all()):
        return own(self, hidden_states, attention_mask, *args, **kwargs)
    batch, seq, width = hidden_states.shape
    rows = real.reshape(-1).nonzero().squeeze(1)
    flat = hidden_states.reshape(batch * seq, width)
    x = flat.index_select(0, rows)
    attention = self.attention.self
    heads, size = attention.num_attention_heads, attention.attention_head_size

    def padded(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(batch * seq, heads * size).index_copy(0, rows, t)
        return out.view(batch, seq, heads, size).transpose(1, 2)

    q, k, v = (padded(projection(x)) for projection in (attention.query, attention.key, attention.value))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attention.scaling)
    context = context.transpose(1, 2).reshape(batch * seq, heads * size).index_select(0, rows)
    out = self.feed_forward_chunk(self.attention.output(context, x))
    return flat.index_copy(0, rows, out.to(flat.dtype)).view(batch, seq, width)
