"""The side network's building blocks: a transformer block of the backbone's own kind, r wide."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pac.side.weights import BlockStyle

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
}


class _WideningLinear(torch.autograd.Function):
    """`F.linear(x.to(weight.dtype), weight)` for a 16-bit x (states read from the cache or from a 16-bit
    backbone) that keeps x itself for backward, not its widened copy: the same arithmetic, half the
    memory for a side block's backbone state."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x.to(weight.dtype), weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = (grad @ weight).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(weight.dtype)
        return grad_x, grad_weight


def down_project(linear: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """A side block's Down_i(h_i), fp32 arithmetic whatever h_i's storage dtype."""
    if hidden.dtype == linear.weight.dtype or torch.is_autocast_enabled(hidden.device.type):
        return linear(hidden)
    out = _WideningLinear.apply(hidden, linear.weight)
    return out if linear.bias is None else out + linear.bias


class _GatedProduct(torch.autograd.Function):
    """down(act(gate) * up) for the MLP's pre-activations gate and up (gate None: act(up)); keeps only the
    two pre-activations for backward and recomputes act and the product there (elementwise, cheap)
    instead of keeping act(gate), the product and the activation's own input: the same arithmetic,
    half the memory of an MLP."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, act):
        ctx.act = act
        ctx.gated = gate is not None
        ctx.save_for_backward(weight, *((gate, up) if gate is not None else (up,)))
        product = act(gate) * up if gate is not None else act(up)
        return F.linear(product, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        weight, *kept = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [tensor.detach().requires_grad_() for tensor in kept]
            product = ctx.act(inputs[0]) * inputs[1] if ctx.gated else ctx.act(inputs[0])
        flat = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2]:
            grad_weight = (flat.t() @ product.detach().reshape(-1, product.shape[-1]).to(flat.dtype)).to(weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = flat.sum(0).to(weight.dtype)
        grads = torch.autograd.grad(product, inputs, (grad @ weight.to(grad.dtype)).to(product.dtype))
        grad_gate, grad_up = (grads[0], grads[1]) if ctx.gated else (None, grads[0])
        return grad_gate, grad_up, grad_weight, grad_bias, None


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel; the same arithmetic as below
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # 16-bit activations (bf16 autocast): normalise in fp32, return the activation's dtype
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def make_norm(style: BlockStyle, width: int) -> nn.Module:
    return RMSNorm(width, style.norm_eps) if style.norm == "rms" else nn.LayerNorm(width, eps=style.norm_eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class KeyValues:
    """One attention's keys and values so far, for decoding one position at a time (fp32, rotated)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # [batch, heads, positions, head_dim]
        self.values: torch.Tensor | None = None
        self._rotation: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin of positions 0.. so far

    def rotation(self, attention: SideAttention, start: int, end: int,
                 like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`attention`'s rotary cos and sin for positions [start, end), from a table made once per doubling
        (the same numbers as computing them for those positions alone: each angle is position * frequency)."""
        if self._rotation is None or self._rotation[0].shape[2] < end:
            made = self._rotation[0].shape[2] if self._rotation is not None else 0
            self._rotation = attention._rotation(0, max(end, 2 * made, 64), like)
        cos, sin = self._rotation
        return cos[:, :, start:end], sin[:, :, start:end]

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys and values; all of them so far."""
        if self.keys is not None:
            keys, values = torch.cat((self.keys, keys), dim=2), torch.cat((self.values, values), dim=2)
        self.keys, self.values = keys, values
        return keys, values


class SideAttention(nn.Module):
    """Multi-head attention of width r; rotary positions with the frequencies kept by pruning."""

    def __init__(self, width: int, heads: int, head_dim: int, bias: bool, rope: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(width, inner, bias=bias)
        self.k = nn.Linear(width, inner, bias=bias)
        self.v = nn.Linear(width, inner, bias=bias)
        self.o = nn.Linear(inner, width, bias=bias)
        # Per-head inverse frequencies of the rotary pairs this side head kept (set by pruning).
        self.register_buffer("inv_freq", torch.ones(heads, head_dim // 2) if rope else None)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def _rotation(self, start: int, end: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(start, end, device=like.device, dtype=like.dtype)
        angles = positions[None, None, :, None] * self.inv_freq.to(like.dtype)[None, :, None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, x, mask, memory=None, memory_mask=None, cache: KeyValues | None = None) -> torch.Tensor:
        """Attention of x's positions over x (self) or `memory` (cross). With `cache` (decoding), x holds
        only the new positions: self-attention appends their keys and values to the cache and attends
        over all so far; cross-attention computes the memory's keys and values once."""
        source = x if memory is None else memory
        q = self._split(self.q(x))
        narrow = q.dtype
        # Rotary angles and attention itself always in fp32 (under 16-bit autocast too): bf16 cannot
        # hold angles of a few hundred radians, and CPU attention's 16-bit backward is ~3x slower.
        q = q.float()
        if memory is not None and cache is not None and cache.keys is not None:
            k, v = cache.keys, cache.values
        else:
            k, v = self._split(self.k(source)).float(), self._split(self.v(source)).float()
            if self.inv_freq is not None and memory is None:
                start = cache.length if cache is not None else 0
                end = start + x.shape[1]
                cos, sin = cache.rotation(self, start, end, q) if cache is not None else self._rotation(0, end, q)
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            if cache is not None:
                k, v = cache.extend(k, v)
        attend = mask if memory is None else memory_mask
        with torch.autocast(q.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend if attend.dtype == torch.bool else attend.float())
        return self.o(out.to(narrow).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class SideMLP(nn.Module):
    def __init__(self, width: int, inner: int, style: BlockStyle, bias: bool) -> None:
        super().__init__()
        self.up = nn.Linear(width, inner, bias=bias)
        self.gate = nn.Linear(width, inner, bias=bias) if style.gated_mlp else None
        self.down = nn.Linear(inner, width, bias=bias)
        self.act = ACTIVATIONS[style.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate(x) if self.gate is not None else None
        if torch.is_grad_enabled():
            return _GatedProduct.apply(gate, self.up(x), self.down.weight, self.down.bias, self.act)
        hidden = self.act(gate) * self.up(x) if gate is not None else self.act(self.up(x))
        return self.down(hidden)


class SideBlock(nn.Module):
    """a_i = block(mu_i * Down_i(h_i) + (1 - mu_i) * a_{i-1}), a pruned copy of backbone layer i."""

    def __init__(self, hidden: int, width: int, heads: int, head_dim: int, mlp_inner: int,
                 style: BlockStyle, bias: bool, cross_attention: bool) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, width, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))  # mu = sigmoid(gate) = 0.5 at start
        self.pre_norm = style.pre_norm
        self.attention = SideAttention(width, heads, head_dim, bias, rope=style.rope_theta is not None)
        self.cross = SideAttention(width, heads, head_dim, bias, rope=False) if cross_attention else None
        self.mlp = SideMLP(width, mlp_inner, style, bias)
        self.norms = nn.ModuleList(make_norm(style, width) for _ in range(3 if cross_attention else 2))

    def _sublayer(self, x, norm, fn) -> torch.Tensor:
        return x + fn(norm(x)) if self.pre_norm else norm(x + fn(x))

    def forward(self, hidden, previous, mask, memory=None, memory_mask=None,
                cache: tuple[KeyValues, KeyValues] | None = None) -> torch.Tensor:
        """`cache` (decoding): the self- and cross-attention's keys and values so far."""
        mine, cross = cache if cache is not None else (None, None)
        mu = torch.sigmoid(self.gate)
        x = mu * down_project(self.down, hidden) + (1 - mu) * previous
        x = self._sublayer(x, self.norms[0], lambda y: self.attention(y, mask, cache=mine))
        if self.cross is not None:
            x = self._sublayer(x, self.norms[1], lambda y: self.cross(y, None, memory, memory_mask, cache=cross))
        return self._sublayer(x, self.norms[-1], self.mlp)
