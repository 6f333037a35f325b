"""pac.v1 collective.proto <-> the ring AllReduce's own types (pac.collective)."""

from __future__ import annotations

import math

import torch
from google.protobuf.message import DecodeError

from pac.collective import RingGroup, RingMessage, RingOpen
from pac.collective.bucket import DEFAULT_BUCKET_BYTES
from pac.collective.group import MAX_SEGMENT_BYTES
from pac.v1 import collective_pb2
from pac.wire import DTYPES, WireError, dtype_name
from pac.wire.codecs import tensor_bytes, tensor_from_bytes


def group_to_proto(group: RingGroup) -> collective_pb2.GroupSpec:
    return collective_pb2.GroupSpec(
        group_id=group.group_id,
        rank=group.rank,
        members=list(group.members),
        step_timeout_s=group.step_timeout_s,
        segment_bytes=group.segment_bytes,
        bucket_bytes=group.bucket_bytes,
        streams=group.streams,
        wire=group.wire,
    )


def group_from_proto(message: collective_pb2.GroupSpec) -> RingGroup:
    return RingGroup(
        group_id=message.group_id,
        rank=message.rank,
        members=tuple(message.members),
        step_timeout_s=message.step_timeout_s or 60.0,
        segment_bytes=message.segment_bytes or MAX_SEGMENT_BYTES,
        bucket_bytes=message.bucket_bytes or DEFAULT_BUCKET_BYTES,
        streams=message.streams or 2,
        wire=message.wire or "fp32",
    )


_OPEN_FIELDS = ("group_id", "op_id", "from_rank", "world_size", "layout", "timeout_s", "stream", "streams")


def open_to_proto(value: RingOpen) -> collective_pb2.RingFrame:
    return collective_pb2.RingFrame(open=collective_pb2.RingOpen(**{f: getattr(value, f) for f in _OPEN_FIELDS}))


def open_from_proto(message: collective_pb2.RingOpen) -> RingOpen:
    return RingOpen(**{f: getattr(message, f) for f in _OPEN_FIELDS})


# ---- RingFrame, written and read by hand ---------------------------------------------------------------
# A data frame is up to 4 MiB of values behind a dozen bytes of fields. Through protobuf objects each hop
# would copy the payload four times (message init, serialize; parse, attribute read). The ring instead
# writes RingFrame's wire format itself (one join of the fields and a view of the tensor) and reads it as
# a zero-copy view of the received bytes. The bytes are exactly what protobuf writes for the same frame
# (tests check both directions), so proto/pac/v1/collective.proto stays the contract; any frame this
# reader does not expect (an open frame, unknown fields) goes through protobuf.


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 64:
        if pos >= len(data):
            raise WireError("ring frame: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise WireError("ring frame: varint longer than 10 bytes")


def ring_frame_to_bytes(value: RingOpen | RingMessage) -> bytes:
    """RingFrame wire bytes of an open or data frame (the RingPush request serializer)."""
    if isinstance(value, RingOpen):
        return open_to_proto(value).SerializeToString()
    payload = memoryview(value.payload).cast("B")
    fields = b"".join(
        tag + _varint(number)
        for tag, number in ((b"\x08", value.bucket), (b"\x10", value.step), (b"\x18", value.segment))
        if number
    )
    if payload.nbytes:
        fields += b"\x22" + _varint(payload.nbytes)
    return b"".join((b"\x12", _varint(len(fields) + payload.nbytes), fields, payload))


def ring_frame_from_bytes(data: bytes) -> RingOpen | RingMessage | None:
    """An open frame, a data frame (payload: a view of `data`), or None for an empty frame."""
    if data[:1] == b"\x12":
        size, pos = _read_varint(data, 1)
        if pos + size == len(data):
            message = _data_fields(data, pos)
            if message is not None:
                return message
    try:
        frame = collective_pb2.RingFrame.FromString(data)
    except DecodeError as error:
        raise WireError(f"ring frame of {len(data)} bytes is not a RingFrame: {error}") from None
    kind = frame.WhichOneof("frame")
    if kind == "open":
        return open_from_proto(frame.open)
    if kind == "data":
        return data_from_proto(frame.data)
    return None


def _data_fields(data: bytes, pos: int) -> RingMessage | None:
    numbers = {0x08: 0, 0x10: 0, 0x18: 0}
    payload = memoryview(b"")
    while pos < len(data):
        tag = data[pos]
        if tag in numbers:
            numbers[tag], pos = _read_varint(data, pos + 1)
        elif tag == 0x22:
            size, pos = _read_varint(data, pos + 1)
            if pos + size > len(data):
                raise WireError("ring frame: payload runs past the end of the message")
            payload = memoryview(data)[pos : pos + size]
            pos += size
        else:
            return None  # a field this reader does not know: let protobuf read it
    return RingMessage(numbers[0x08], numbers[0x10], numbers[0x18], payload)


def data_to_proto(value: RingMessage) -> collective_pb2.RingFrame:
    return collective_pb2.RingFrame(
        data=collective_pb2.RingData(
            bucket=value.bucket, step=value.step, segment=value.segment, payload=bytes(value.payload)
        )
    )


def data_from_proto(message: collective_pb2.RingData) -> RingMessage:
    return RingMessage(
        bucket=message.bucket, step=message.step, segment=message.segment, payload=message.payload
    )


def inline_to_proto(tensor: torch.Tensor) -> collective_pb2.InlineTensor:
    return collective_pb2.InlineTensor(
        dtype=dtype_name(tensor.dtype), shape=list(tensor.shape), data=bytes(tensor_bytes(tensor.cpu()))
    )


def inline_from_proto(message: collective_pb2.InlineTensor) -> torch.Tensor:
    if message.dtype not in DTYPES:
        raise WireError(f"inline tensor has unknown dtype {message.dtype!r}")
    dtype = DTYPES[message.dtype]
    shape = tuple(message.shape)
    if any(d < 0 for d in shape):
        raise WireError(f"inline tensor has a negative dimension in {list(shape)}")
    count = math.prod(shape)
    if len(message.data) != count * dtype.itemsize:
        raise WireError(
            f"inline tensor {message.dtype} {list(shape)} needs {count * dtype.itemsize} bytes, "
            f"got {len(message.data)}"
        )
    return tensor_from_bytes(message.data, dtype, count).reshape(shape).clone()
