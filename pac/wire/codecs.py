"""Codecs: how a tensor's values become payload bytes, one small class each.

- none: the tensor's own bytes (any dtype), exact.
- fp16: floats cast to float16 on the wire and back to their dtype on arrival; relative error <= 2**-11
  (absolute <= 2**-25 below float16's normal range),
  values beyond float16's range (|x| > 65504) are refused rather than turned into inf.
- int8: floats quantised per row (the last dimension) to int8 with one float32 scale per row,
  scale = max|row| / 127; every element comes back within max|row| / 254 of its value (see
  int8_error_bound), plus the rounding of the target dtype. Payload: the scales, then the int8 values.

Payloads are little-endian, C-contiguous, as torch lays them out on the machines we run on.
"""

from __future__ import annotations

import abc
import math
import warnings

import torch

from pac.wire.dtypes import DTYPES, FLOAT_DTYPES
from pac.wire.errors import WireError

FP16_MAX = 65504.0


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).cpu().numpy()).cast("B")


def tensor_from_bytes(payload: bytes | bytearray | memoryview, dtype: torch.dtype, count: int) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=dtype)
    with warnings.catch_warnings():  # read-only bytes are fine: the result is copied or only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(payload, dtype=dtype, count=count)


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row_length) of a tensor viewed as rows along its last dimension."""
    if len(shape) == 0:
        return 1, 1
    length = shape[-1]
    return (math.prod(shape[:-1]), length)


class Codec(abc.ABC):
    """Base of the codec family; subclasses set `name` and implement the three abstract methods."""

    name = ""
    float_only = False

    def check_dtype(self, dtype: str) -> None:
        if self.float_only and dtype not in FLOAT_DTYPES:
            raise WireError(
                f"codec {self.name} carries floating-point tensors only, not {dtype}; use codec none"
            )

    @abc.abstractmethod
    def payload_bytes(self, dtype: str, shape: tuple[int, ...]) -> int:
        """See the subclasses."""

    @abc.abstractmethod
    def encode(self, tensor: torch.Tensor) -> memoryview:
        """See the subclasses."""

    @abc.abstractmethod
    def decode(self, payload: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
        """See the subclasses."""


class NoneCodec(Codec):
    name = "none"

    def payload_bytes(self, dtype: str, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * DTYPES[dtype].itemsize

    def encode(self, tensor: torch.Tensor) -> memoryview:
        return tensor_bytes(tensor)

    def decode(self, payload, dtype, shape):
        return tensor_from_bytes(payload, DTYPES[dtype], math.prod(shape)).reshape(shape)


class Fp16Codec(Codec):
    name = "fp16"
    float_only = True

    def payload_bytes(self, dtype: str, shape: tuple[int, ...]) -> int:
        return math.prod(shape) * 2

    def encode(self, tensor: torch.Tensor) -> memoryview:
        if tensor.dtype != torch.float16 and tensor.numel() > 0:
            peak = float(tensor.detach().abs().amax())
            if not peak <= FP16_MAX:  # also catches nan
                raise WireError(
                    f"codec fp16 cannot carry values of magnitude {peak:g} (float16 max is {FP16_MAX:g}); "
                    "use codec none or int8 for this job"
                )
        return tensor_bytes(tensor.detach().to(torch.float16))

    def decode(self, payload, dtype, shape):
        half = tensor_from_bytes(payload, torch.float16, math.prod(shape))
        return half.to(DTYPES[dtype]).reshape(shape)


class Int8Codec(Codec):
    name = "int8"
    float_only = True

    def payload_bytes(self, dtype: str, shape: tuple[int, ...]) -> int:
        rows, length = _rows(shape)
        return rows * 4 + rows * length

    def encode(self, tensor: torch.Tensor) -> memoryview:
        rows, length = _rows(tuple(tensor.shape))
        values = tensor.detach().reshape(rows, length).float()
        peak = values.abs().amax(dim=1) if length > 0 else torch.zeros(rows)
        if not bool(torch.isfinite(peak).all()):
            raise WireError("codec int8 cannot carry inf or nan values; use codec none for this job")
        scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
        quantised = torch.round(values / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        out = torch.empty(rows * 4 + rows * length, dtype=torch.uint8)
        out[: rows * 4] = scale.contiguous().view(torch.uint8)
        out[rows * 4 :] = quantised.reshape(-1).view(torch.uint8)
        return memoryview(out.numpy()).cast("B")

    def decode(self, payload, dtype, shape):
        rows, length = _rows(shape)
        raw = tensor_from_bytes(payload, torch.uint8, rows * 4 + rows * length)
        scale = raw[: rows * 4].view(torch.float32)
        quantised = raw[rows * 4 :].view(torch.int8).reshape(rows, length)
        return (quantised.float() * scale[:, None]).to(DTYPES[dtype]).reshape(shape)


CODECS: dict[str, Codec] = {codec.name: codec for codec in (NoneCodec(), Fp16Codec(), Int8Codec())}


def codec_for(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise WireError(f"unknown codec {name!r}; supported: {', '.join(CODECS)}") from None


def int8_error_bound(tensor: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |x - decode(encode(x))| for the int8 codec: max|row| / 254 (+ dtype rounding)."""
    rows, length = _rows(tuple(tensor.shape))
    values = tensor.detach().reshape(rows, length).float()
    peak = values.abs().amax(dim=1, keepdim=True) if length > 0 else torch.zeros(rows, 1)
    rounding = values.abs() * (torch.finfo(tensor.dtype).eps if tensor.dtype.is_floating_point else 0.0)
    bound = peak / 254.0 * (1 + 1e-6) + rounding
    return bound.expand(rows, length).reshape(tensor.shape)
