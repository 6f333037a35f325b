"""pac.v1 tensor.proto <-> the wire's own types (pac.wire): tensor headers and keys."""

from __future__ import annotations

from pac.v1 import tensor_pb2
from pac.wire import TensorHeader, TensorKind, WireError


def header_to_proto(header: TensorHeader) -> tensor_pb2.TensorHeader:
    return tensor_pb2.TensorHeader(
        job_id=header.job_id,
        step=header.step,
        micro_batch=header.micro_batch,
        kind=str(header.kind),
        dtype=header.dtype,
        shape=list(header.shape),
        codec=header.codec,
        payload_bytes=header.payload_bytes,
    )


def header_from_proto(message: tensor_pb2.TensorHeader) -> TensorHeader:
    """A validated TensorHeader; WireError naming the field otherwise."""
    try:
        kind = TensorKind(message.kind)
    except ValueError:
        raise WireError(
            f"unknown tensor kind {message.kind!r}; supported: {', '.join(k.value for k in TensorKind)}"
        ) from None
    return TensorHeader(
        job_id=message.job_id,
        step=message.step,
        micro_batch=message.micro_batch,
        kind=kind,
        dtype=message.dtype,
        shape=tuple(message.shape),
        codec=message.codec or "none",
        payload_bytes=message.payload_bytes,
    )


def key_to_proto(job_id: str, step: int, micro_batch: int, kind: str) -> tensor_pb2.TensorKey:
    return tensor_pb2.TensorKey(job_id=job_id, step=step, micro_batch=micro_batch, kind=str(kind))


def key_from_proto(message: tensor_pb2.TensorKey) -> tuple[str, int, int, str]:
    if not message.job_id:
        raise WireError("tensor key has an empty job_id")
    try:
        kind = TensorKind(message.kind)
    except ValueError:
        raise WireError(f"unknown tensor kind {message.kind!r}") from None
    return (message.job_id, message.step, message.micro_batch, str(kind))
