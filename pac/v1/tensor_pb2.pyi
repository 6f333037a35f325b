from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TensorHeader(_message.Message):
    __slots__ = ("job_id", "step", "micro_batch", "kind", "dtype", "shape", "codec", "payload_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    micro_batch: int
    kind: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    codec: str
    payload_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., micro_batch: _Optional[int] = ..., kind: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., codec: _Optional[str] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: TensorHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[TensorHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SendReply(_message.Message):
    __slots__ = ("payload_bytes",)
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload_bytes: int
    def __init__(self, payload_bytes: _Optional[int] = ...) -> None: ...

class TensorKey(_message.Message):
    __slots__ = ("job_id", "step", "micro_batch", "kind")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    micro_batch: int
    kind: str
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., micro_batch: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class TakeRequest(_message.Message):
    __slots__ = ("key", "timeout_s", "codec")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    key: TensorKey
    timeout_s: float
    codec: str
    def __init__(self, key: _Optional[_Union[TensorKey, _Mapping]] = ..., timeout_s: _Optional[float] = ..., codec: _Optional[str] = ...) -> None: ...

class RelayRequest(_message.Message):
    __slots__ = ("key", "target", "codec", "timeout_s")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    key: TensorKey
    target: str
    codec: str
    timeout_s: float
    def __init__(self, key: _Optional[_Union[TensorKey, _Mapping]] = ..., target: _Optional[str] = ..., codec: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class RelayReply(_message.Message):
    __slots__ = ("payload_bytes", "seconds")
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    payload_bytes: int
    seconds: float
    def __init__(self, payload_bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
