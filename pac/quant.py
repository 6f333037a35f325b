"""Weight-only quantisation of the frozen backbone (PAC+), in plain PyTorch.

`bf16` and `fp16` hold the whole frozen backbone (weights and its forward pass) in 16 bits; what
trains beside it (side network, head) stays fp32 (`Backbone.trainable_dtype`). On CPUs with bfloat16
matrix instructions (AVX512-BF16, AMX) `bf16` runs the backbone's forward about twice as fast as fp32;
`fp16` is for GPUs without bfloat16 (most CPUs run fp16 matmuls slowly).

int8 and 4-bit, symmetric, group-wise along the input dimension: each group of `group_size` weights
of one output row shares a scale (absmax / 127 for int8, absmax / 7 for 4-bit). 4-bit values are
stored two to a byte. The forward pass de-quantises the weight of one layer at a time and runs an
ordinary matmul, so it works on CPU and CUDA alike; only the compact form stays in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pac.errors import ConfigError
from pac.formats import QUANTIZATIONS

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class QuantizedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int = 64) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        group = group_size if in_features % group_size == 0 else in_features
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        self.dtype = weight.dtype
        grouped = weight.detach().float().reshape(out_features, in_features // group, group)
        top = 127 if bits == 8 else 7
        scale = (grouped.abs().amax(dim=-1, keepdim=True) / top).clamp(min=1e-12)
        q = torch.round(grouped / scale).clamp(-top - 1, top).to(torch.int8).reshape(out_features, in_features)
        if bits == 4:
            if in_features % 2:
                raise ConfigError(f"4-bit quantisation needs an even input width, got {in_features}")
            nibbles = (q + 8).to(torch.uint8)  # 0..15
            q = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scale", scale.to(torch.float16 if weight.dtype == torch.float16 else torch.float32))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def dequantize(self) -> torch.Tensor:
        q = self.qweight
        if self.bits == 4:
            low = (q & 0x0F).to(torch.int8) - 8
            high = (q >> 4).to(torch.int8) - 8
            q = torch.stack((low, high), dim=-1).reshape(self.out_features, self.in_features)
        grouped = q.reshape(self.out_features, -1, self.group).to(self.scale.dtype) * self.scale
        return grouped.reshape(self.out_features, self.in_features).to(self.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The de-quantised weight (some model code reads `.weight.dtype` of a linear layer)."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group}"


def _as_linear_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight is [in, out]
        return module.weight.t(), module.bias
    return None


def quantize_backbone(backbone, method: str, group_size: int = 64) -> int:
    """int8/int4: replace every linear layer inside the backbone's transformer layers; returns how many.
    bf16/fp16: cast the whole backbone to that dtype; returns the number of parameters cast."""
    if method not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {method!r}")
    if method == "none":
        return 0
    if method in HALF_DTYPES:
        backbone.fingerprint()  # of the checkpoint's weights, as for int8 and 4-bit
        backbone.model.to(HALF_DTYPES[method])
        backbone.quantization = method
        return sum(p.numel() for p in backbone.model.parameters())
    bits = 8 if method == "int8" else 4
    backbone.fingerprint()  # of the full-precision weights: an adapter re-attaches to the same checkpoint
    replaced = 0
    for stack in backbone.stacks:
        for layer in stack:
            replaced += len(quantize_layer(layer, bits, group_size))
    backbone.quantization = method
    return replaced


def quantize_layer(layer: nn.Module, bits: int, group_size: int = 64) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace every linear layer inside `layer` by its `bits`-bit QuantizedLinear; returns (parent, name,
    the module replaced) of each, so that `restore_layer` can put them back."""
    replaced = []
    for parent in list(layer.modules()):
        for name, child in list(parent.named_children()):
            found = _as_linear_weight(child)
            if found is not None and not getattr(found[0], "is_meta", False):
                setattr(parent, name, QuantizedLinear(found[0], found[1], bits, group_size))
                replaced.append((parent, name, child))
    return replaced


def restore_layer(replaced: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, child in reversed(replaced):
        setattr(parent, name, child)
