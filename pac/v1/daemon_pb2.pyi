from pac.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RenewCertificateRequest(_message.Message):
    __slots__ = ("certificate_pem",)
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ...) -> None: ...

class RenewCertificateReply(_message.Message):
    __slots__ = ("not_after",)
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    not_after: str
    def __init__(self, not_after: _Optional[str] = ...) -> None: ...

class RevocationList(_message.Message):
    __slots__ = ("crl_pem",)
    CRL_PEM_FIELD_NUMBER: _ClassVar[int]
    crl_pem: bytes
    def __init__(self, crl_pem: _Optional[bytes] = ...) -> None: ...

class RevocationReply(_message.Message):
    __slots__ = ("number",)
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    number: int
    def __init__(self, number: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProfileRequest(_message.Message):
    __slots__ = ("model", "batch_sizes", "seq_len", "reduction_factor", "refresh", "quantization")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    model: str
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    seq_len: int
    reduction_factor: int
    refresh: bool
    quantization: str
    def __init__(self, model: _Optional[str] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., seq_len: _Optional[int] = ..., reduction_factor: _Optional[int] = ..., refresh: _Optional[bool] = ..., quantization: _Optional[str] = ...) -> None: ...

class BatchTimings(_message.Message):
    __slots__ = ("batch_size", "forward_s", "side_forward_s", "side_backward_s")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    SIDE_FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    SIDE_BACKWARD_S_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    forward_s: _containers.RepeatedScalarFieldContainer[float]
    side_forward_s: _containers.RepeatedScalarFieldContainer[float]
    side_backward_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, batch_size: _Optional[int] = ..., forward_s: _Optional[_Iterable[float]] = ..., side_forward_s: _Optional[_Iterable[float]] = ..., side_backward_s: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelProfile(_message.Message):
    __slots__ = ("node_id", "model", "seq_len", "reduction_factor", "timings", "param_bytes", "activation_bytes_per_sample", "side_param_bytes", "memory_budget_bytes", "measured_at_unix", "accelerator", "extra_json", "quantization")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PARAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_BYTES_PER_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SIDE_PARAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    model: str
    seq_len: int
    reduction_factor: int
    timings: _containers.RepeatedCompositeFieldContainer[BatchTimings]
    param_bytes: _containers.RepeatedScalarFieldContainer[int]
    activation_bytes_per_sample: _containers.RepeatedScalarFieldContainer[int]
    side_param_bytes: _containers.RepeatedScalarFieldContainer[int]
    memory_budget_bytes: int
    measured_at_unix: float
    accelerator: str
    extra_json: str
    quantization: str
    def __init__(self, node_id: _Optional[str] = ..., model: _Optional[str] = ..., seq_len: _Optional[int] = ..., reduction_factor: _Optional[int] = ..., timings: _Optional[_Iterable[_Union[BatchTimings, _Mapping]]] = ..., param_bytes: _Optional[_Iterable[int]] = ..., activation_bytes_per_sample: _Optional[_Iterable[int]] = ..., side_param_bytes: _Optional[_Iterable[int]] = ..., memory_budget_bytes: _Optional[int] = ..., measured_at_unix: _Optional[float] = ..., accelerator: _Optional[str] = ..., extra_json: _Optional[str] = ..., quantization: _Optional[str] = ...) -> None: ...

class ProfileReply(_message.Message):
    __slots__ = ("profile", "from_store", "elapsed_s")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    FROM_STORE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    profile: ModelProfile
    from_store: bool
    elapsed_s: float
    def __init__(self, profile: _Optional[_Union[ModelProfile, _Mapping]] = ..., from_store: _Optional[bool] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class EchoRequest(_message.Message):
    __slots__ = ("payload", "reply_bytes")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    reply_bytes: int
    def __init__(self, payload: _Optional[bytes] = ..., reply_bytes: _Optional[int] = ...) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class ProbePeerRequest(_message.Message):
    __slots__ = ("address", "peer_node_id", "payload_bytes", "rounds")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    address: str
    peer_node_id: str
    payload_bytes: int
    rounds: int
    def __init__(self, address: _Optional[str] = ..., peer_node_id: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., rounds: _Optional[int] = ...) -> None: ...

class LinkMeasurement(_message.Message):
    __slots__ = ("source_node_id", "target_node_id", "rtt_s", "bandwidth_bytes_per_s", "payload_bytes", "rounds")
    SOURCE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RTT_S_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    source_node_id: str
    target_node_id: str
    rtt_s: float
    bandwidth_bytes_per_s: float
    payload_bytes: int
    rounds: int
    def __init__(self, source_node_id: _Optional[str] = ..., target_node_id: _Optional[str] = ..., rtt_s: _Optional[float] = ..., bandwidth_bytes_per_s: _Optional[float] = ..., payload_bytes: _Optional[int] = ..., rounds: _Optional[int] = ...) -> None: ...
