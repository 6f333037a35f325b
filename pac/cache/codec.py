"""How one hidden-state tensor [tokens, width] is stored: fp32, fp16, bf16, or int8 with a per-token
scale (absmax / 127, kept as fp32). Pure functions over bytes; no files here."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from pac.errors import ConfigError
from pac.formats import CACHE_PRECISIONS

PRECISIONS = CACHE_PRECISIONS  # pac.formats
_FLOAT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"cache precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def encoded_size(precision: str, tokens: int, width: int) -> int:
    if precision == "int8":
        return tokens * width + 4 * tokens
    return tokens * width * (4 if precision == "fp32" else 2)


def encode(tensor: torch.Tensor, precision: str) -> bytes:
    """[tokens, width] float tensor -> bytes."""
    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    if precision == "int8":
        scale = (tensor.abs().amax(dim=-1, keepdim=True) / 127.0).clamp(min=1e-12)
        values = torch.round(tensor / scale).clamp(-127, 127).to(torch.int8)
        return values.numpy().tobytes() + scale.squeeze(-1).numpy().tobytes()
    converted = tensor.to(_FLOAT[precision])
    if precision == "bf16":  # numpy has no bfloat16: move the raw 16-bit words
        return converted.view(torch.int16).numpy().tobytes()
    return converted.numpy().tobytes()


def decode(data: bytes | memoryview, precision: str, tokens: int, width: int) -> torch.Tensor:
    """bytes -> [tokens, width] fp32 tensor (a copy: it does not alias the buffer)."""
    if precision == "int8":
        values = np.frombuffer(data, dtype=np.int8, count=tokens * width).reshape(tokens, width)
        scale = np.frombuffer(data, dtype=np.float32, count=tokens, offset=tokens * width)
        return torch.from_numpy(values.astype(np.float32) * scale[:, None])
    out = np.empty((tokens, width), dtype=np.float32)
    decode_into(data, precision, out)
    return torch.from_numpy(out)


def decode_into(data: bytes | memoryview, precision: str, out: np.ndarray) -> None:
    """Decode straight into `out` (a float32 [tokens, width] array, e.g. a row of a batch tensor; for
    fp16 records also a float16 one, for bf16 records an int16 view of a bfloat16 tensor): no
    intermediate tensor, one pass over the bytes."""
    tokens, width = out.shape
    if precision == "bf16" and out.dtype == np.int16:  # the raw words into a bfloat16 tensor's storage
        np.copyto(out, np.frombuffer(data, dtype=np.int16, count=tokens * width).reshape(tokens, width))
    elif precision == "int8":
        values = np.frombuffer(data, dtype=np.int8, count=tokens * width).reshape(tokens, width)
        scale = np.frombuffer(data, dtype=np.float32, count=tokens, offset=tokens * width)
        np.multiply(values, scale[:, None], out=out, casting="unsafe")
    elif precision == "fp32" or out.dtype == np.float16:
        dtype = np.float32 if precision == "fp32" else np.float16
        np.copyto(out, np.frombuffer(data, dtype=dtype, count=tokens * width).reshape(tokens, width))
    else:  # 16-bit words -> float32: torch's vectorised conversion, 10-17x numpy's on this project's CPU
        words = np.frombuffer(data, dtype=np.int16, count=tokens * width).reshape(tokens, width)
        with warnings.catch_warnings():  # the record's bytes are read-only; they are only read
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(words).view(torch.bfloat16 if precision == "bf16" else torch.float16)
        torch.from_numpy(out).copy_(source)
