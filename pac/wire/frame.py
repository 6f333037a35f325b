"""A tensor as it travels: its header and its payload, and back."""

from __future__ import annotations

import torch

from pac.wire.codecs import codec_for
from pac.wire.dtypes import dtype_name
from pac.wire.errors import WireError
from pac.wire.header import TensorHeader, TensorKind


def encode(
    tensor: torch.Tensor,
    *,
    job_id: str,
    step: int,
    micro_batch: int,
    kind: TensorKind | str,
    codec: str = "none",
) -> tuple[TensorHeader, memoryview]:
    """Encode a tensor: its header and its payload (cut it with `chunks`)."""
    encoder = codec_for(codec)
    dtype = dtype_name(tensor.dtype)
    encoder.check_dtype(dtype)
    payload = encoder.encode(tensor)
    header = TensorHeader(
        job_id=job_id,
        step=step,
        micro_batch=micro_batch,
        kind=TensorKind(kind),
        dtype=dtype,
        shape=tuple(int(d) for d in tensor.shape),
        codec=codec,
        payload_bytes=len(payload),
    )
    return header, payload


def decode(header: TensorHeader, payload: bytes | bytearray | memoryview) -> torch.Tensor:
    """Rebuild the tensor a header describes from its whole payload."""
    if len(payload) != header.payload_bytes:
        raise WireError(
            f"tensor {header.key_text()}: payload has {len(payload)} bytes, header says {header.payload_bytes}"
        )
    return codec_for(header.codec).decode(payload, header.dtype, header.shape)
