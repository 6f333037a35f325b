from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RingOpen(_message.Message):
    __slots__ = ("group_id", "op_id", "from_rank", "world_size", "layout", "timeout_s", "stream", "streams")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    op_id: int
    from_rank: int
    world_size: int
    layout: str
    timeout_s: float
    stream: int
    streams: int
    def __init__(self, group_id: _Optional[str] = ..., op_id: _Optional[int] = ..., from_rank: _Optional[int] = ..., world_size: _Optional[int] = ..., layout: _Optional[str] = ..., timeout_s: _Optional[float] = ..., stream: _Optional[int] = ..., streams: _Optional[int] = ...) -> None: ...

class RingData(_message.Message):
    __slots__ = ("bucket", "step", "segment", "payload")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    bucket: int
    step: int
    segment: int
    payload: bytes
    def __init__(self, bucket: _Optional[int] = ..., step: _Optional[int] = ..., segment: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class RingFrame(_message.Message):
    __slots__ = ("open", "data")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    open: RingOpen
    data: RingData
    def __init__(self, open: _Optional[_Union[RingOpen, _Mapping]] = ..., data: _Optional[_Union[RingData, _Mapping]] = ...) -> None: ...

class RingAck(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: int
    def __init__(self, frames: _Optional[int] = ...) -> None: ...

class GroupSpec(_message.Message):
    __slots__ = ("group_id", "rank", "members", "step_timeout_s", "segment_bytes", "bucket_bytes", "streams", "wire")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    STEP_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUCKET_BYTES_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    rank: int
    members: _containers.RepeatedScalarFieldContainer[str]
    step_timeout_s: float
    segment_bytes: int
    bucket_bytes: int
    streams: int
    wire: str
    def __init__(self, group_id: _Optional[str] = ..., rank: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., step_timeout_s: _Optional[float] = ..., segment_bytes: _Optional[int] = ..., bucket_bytes: _Optional[int] = ..., streams: _Optional[int] = ..., wire: _Optional[str] = ...) -> None: ...

class InlineTensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SyntheticTensors(_message.Message):
    __slots__ = ("numel", "dtype", "seed")
    NUMEL_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    numel: int
    dtype: str
    seed: int
    def __init__(self, numel: _Optional[int] = ..., dtype: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class AllReduceRequest(_message.Message):
    __slots__ = ("group", "op_id", "tensors", "synthetic", "iterations", "return_result")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    RETURN_RESULT_FIELD_NUMBER: _ClassVar[int]
    group: GroupSpec
    op_id: int
    tensors: _containers.RepeatedCompositeFieldContainer[InlineTensor]
    synthetic: SyntheticTensors
    iterations: int
    return_result: bool
    def __init__(self, group: _Optional[_Union[GroupSpec, _Mapping]] = ..., op_id: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[InlineTensor, _Mapping]]] = ..., synthetic: _Optional[_Union[SyntheticTensors, _Mapping]] = ..., iterations: _Optional[int] = ..., return_result: _Optional[bool] = ...) -> None: ...

class AllReduceReply(_message.Message):
    __slots__ = ("result", "seconds", "checksum")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    result: _containers.RepeatedCompositeFieldContainer[InlineTensor]
    seconds: _containers.RepeatedScalarFieldContainer[float]
    checksum: float
    def __init__(self, result: _Optional[_Iterable[_Union[InlineTensor, _Mapping]]] = ..., seconds: _Optional[_Iterable[float]] = ..., checksum: _Optional[float] = ...) -> None: ...
