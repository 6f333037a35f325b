"""Frozen layers that compute a mini-batch's real tokens only, not its padding.

A mini-batch pads every sample to its longest one (MRPC: 54 real tokens of 72-77 per sample at batches of
8-16), and the model's own layer computes every padded position too, although nothing reads them: the
attention masks them out as keys, the cache keeps each sample's real positions only
(`pac.train.cached.record_tensors`), the heads pool under the mask and a language model's loss counts
real tokens. `unpad_layers` swaps each layer's forward for one that gathers the real tokens into one
[tokens, width] matrix for the projections, norms and feed-forward block, and lays them out padded only
for the attention itself (whose own cost is small at these lengths): the BERT family's encoder layers
(BERT, RoBERTa, XLM-RoBERTa, ELECTRA) and Llama's decoder layers (SmolLM2). The real positions come out as
the model's own forward computes them (the same modules on the same rows); the padded positions hand
their input through unchanged.

It applies where the layer gets a 4-dimensional mask with padding in it, in eval mode, with no
cross-attention or key/value cache (decoding runs the model's own forward), and the encoder layers attend
with SDPA; anything else takes the model's own forward. docs/algorithm.md, "Padding".
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "electra"}
DECODER_TYPES = {"llama"}


def unpad_layers(model_type: str, layers: list[nn.Module]) -> bool:
    """Give each of `layers` the forward that skips padding where it is a layer this module knows; returns
    whether it did (for all of them)."""
    if model_type in ENCODER_TYPES:
        fits, forward = _encoder_fits, _encoder_forward
    elif model_type in DECODER_TYPES:
        fits, forward = _decoder_fits, _decoder_forward
    else:
        return False
    if not layers or not all(fits(layer) for layer in layers):
        return False
    for layer in layers:
        layer.forward = types.MethodType(forward, layer)
    return True


def real_positions(mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] bool: the positions some query attends to, from a [batch, 1, seq, seq] layer mask (bool,
    True attends; or additive, 0 attends)."""
    allowed = mask if mask.dtype == torch.bool else mask == 0
    return allowed.any(dim=-2)[:, 0]


class Rows:
    """Where a padded mini-batch's real positions are, to gather them as rows and lay them out again."""

    def __init__(self, rows: torch.Tensor, batch: int, length: int) -> None:
        self.rows, self.batch, self.length = rows, batch, length

    @classmethod
    def of(cls, mask) -> Rows | None:
        """From a layer's [batch, 1, seq, seq] attention mask; None where there is no padding (or no such mask)."""
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[1] != 1:
            return None
        real = real_positions(mask)
        if bool(real.all()):
            return None
        return cls(real.reshape(-1).nonzero().squeeze(1), real.shape[0], real.shape[1])

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """[batch, seq, width] -> [rows, width]."""
        return padded.reshape(self.batch * self.length, -1).index_select(0, self.rows)

    def spread(self, rows: torch.Tensor, heads: int) -> torch.Tensor:
        """[rows, heads * size] -> [batch, heads, seq, size], zeros at the padded positions."""
        out = rows.new_zeros(self.batch * self.length, rows.shape[-1]).index_copy(0, self.rows, rows)
        return out.view(self.batch, self.length, heads, -1).transpose(1, 2)

    def scatter(self, padded: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`padded` with its real positions replaced by `rows` (a new tensor: `padded` is another's tap)."""
        flat = padded.reshape(self.batch * self.length, -1)
        return flat.index_copy(0, self.rows, rows.to(flat.dtype)).view(padded.shape)


def _encoder_fits(layer: nn.Module) -> bool:
    attention = getattr(getattr(layer, "attention", None), "self", None)
    config = getattr(attention, "config", None)
    return (attention is not None and hasattr(layer, "feed_forward_chunk") and hasattr(layer.attention, "output")
            and getattr(config, "_attn_implementation", None) == "sdpa"
            and all(hasattr(attention, name) for name in ("query", "key", "value", "scaling")))


def _encoder_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
    rows = None
    if not (self.training or any(a is not None for a in args) or kwargs.get("encoder_hidden_states") is not None
            or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None):
        rows = Rows.of(attention_mask)
    if rows is None:
        return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)
    x = rows.gather(hidden_states)
    attention = self.attention.self
    heads = attention.num_attention_heads
    q, k, v = (rows.spread(projection(x), heads) for projection in (attention.query, attention.key, attention.value))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attention.scaling)
    context = rows.gather(context.transpose(1, 2))
    return rows.scatter(hidden_states, self.feed_forward_chunk(self.attention.output(context, x)))


def _decoder_fits(layer: nn.Module) -> bool:
    attention = getattr(layer, "self_attn", None)
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "config")
    return (attention is not None and all(hasattr(attention, name) for name in names)
            and all(hasattr(layer, name) for name in ("input_layernorm", "post_attention_layernorm", "mlp"))
            and hasattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb"))


def _decoder_forward(self, hidden_states: torch.Tensor, *args, **kwargs):
    mask = kwargs.get("attention_mask", args[0] if args else None)
    embeddings = kwargs.get("position_embeddings")
    rows = None
    if not (self.training or embeddings is None or kwargs.get("cache") is not None
            or kwargs.get("past_key_values") is not None or kwargs.get("use_cache")):
        rows = Rows.of(mask)
    if rows is None:
        return type(self).forward(self, hidden_states, *args, **kwargs)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention = self.self_attn
    model_code = sys.modules[type(attention).__module__]
    x = rows.gather(hidden_states)
    normed = self.input_layernorm(x)
    width = attention.head_dim
    q, k, v = (rows.spread(projection(normed), projection.out_features // width)
               for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
    q, k = model_code.apply_rotary_pos_emb(q, k, *embeddings)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation,
                                                   model_code.eager_attention_forward)
    out, _ = attend(attention, q, k, v, mask, dropout=0.0, scaling=attention.scaling)
    x = x + attention.o_proj(rows.gather(out))
    return rows.scatter(hidden_states, x + self.mlp(self.post_attention_layernorm(x)))
