from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Blob(_message.Message):
    __slots__ = ("json", "data")
    JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    json: str
    data: bytes
    def __init__(self, json: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class LoadReply(_message.Message):
    __slots__ = ("held_bytes", "load_s", "cached_records", "fingerprint")
    HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_S_FIELD_NUMBER: _ClassVar[int]
    CACHED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    held_bytes: int
    load_s: float
    cached_records: int
    fingerprint: str
    def __init__(self, held_bytes: _Optional[int] = ..., load_s: _Optional[float] = ..., cached_records: _Optional[int] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class MicroBatch(_message.Message):
    __slots__ = ("index", "rows", "tensors", "sample_keys", "lengths")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    index: int
    rows: int
    tensors: bytes
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, index: _Optional[int] = ..., rows: _Optional[int] = ..., tensors: _Optional[bytes] = ..., sample_keys: _Optional[_Iterable[str]] = ..., lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class RunStepRequest(_message.Message):
    __slots__ = ("job_id", "step", "loss_total", "micro_batches", "timeout_s", "apply", "max_grad_norm")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCHES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    APPLY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    loss_total: int
    micro_batches: _containers.RepeatedCompositeFieldContainer[MicroBatch]
    timeout_s: float
    apply: bool
    max_grad_norm: float
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., loss_total: _Optional[int] = ..., micro_batches: _Optional[_Iterable[_Union[MicroBatch, _Mapping]]] = ..., timeout_s: _Optional[float] = ..., apply: _Optional[bool] = ..., max_grad_norm: _Optional[float] = ...) -> None: ...

class RunStepReply(_message.Message):
    __slots__ = ("loss", "grad_square_norm", "events_json", "cache_records")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_SQUARE_NORM_FIELD_NUMBER: _ClassVar[int]
    EVENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CACHE_RECORDS_FIELD_NUMBER: _ClassVar[int]
    loss: float
    grad_square_norm: float
    events_json: str
    cache_records: int
    def __init__(self, loss: _Optional[float] = ..., grad_square_norm: _Optional[float] = ..., events_json: _Optional[str] = ..., cache_records: _Optional[int] = ...) -> None: ...

class ApplyStepRequest(_message.Message):
    __slots__ = ("job_id", "step", "clip_coefficient")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CLIP_COEFFICIENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    clip_coefficient: float
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., clip_coefficient: _Optional[float] = ...) -> None: ...

class ApplyStepReply(_message.Message):
    __slots__ = ("learning_rate",)
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    def __init__(self, learning_rate: _Optional[float] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("job_id", "optimizer")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    optimizer: bool
    def __init__(self, job_id: _Optional[str] = ..., optimizer: _Optional[bool] = ...) -> None: ...

class GatherCacheRequest(_message.Message):
    __slots__ = ("job_id", "plan_json", "timeout_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    plan_json: str
    timeout_s: float
    def __init__(self, job_id: _Optional[str] = ..., plan_json: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class GatherCacheReply(_message.Message):
    __slots__ = ("records", "fetched_bytes", "local_bytes", "seconds")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    records: int
    fetched_bytes: int
    local_bytes: int
    seconds: float
    def __init__(self, records: _Optional[int] = ..., fetched_bytes: _Optional[int] = ..., local_bytes: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class FetchCacheRequest(_message.Message):
    __slots__ = ("job_id", "stage", "sample_keys")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    stage: int
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., stage: _Optional[int] = ..., sample_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainEpochRequest(_message.Message):
    __slots__ = ("job_id", "epoch", "first_step", "steps_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    epoch: int
    first_step: int
    steps_json: str
    def __init__(self, job_id: _Optional[str] = ..., epoch: _Optional[int] = ..., first_step: _Optional[int] = ..., steps_json: _Optional[str] = ...) -> None: ...

class StepReport(_message.Message):
    __slots__ = ("step", "loss", "samples", "seconds", "allreduce_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLREDUCE_S_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    samples: int
    seconds: float
    allreduce_s: float
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., samples: _Optional[int] = ..., seconds: _Optional[float] = ..., allreduce_s: _Optional[float] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("job_id", "keep_cache")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_CACHE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    keep_cache: bool
    def __init__(self, job_id: _Optional[str] = ..., keep_cache: _Optional[bool] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("job_id", "lease_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_s: float
    def __init__(self, job_id: _Optional[str] = ..., lease_s: _Optional[float] = ...) -> None: ...

class RenewReply(_message.Message):
    __slots__ = ("held",)
    HELD_FIELD_NUMBER: _ClassVar[int]
    held: bool
    def __init__(self, held: _Optional[bool] = ...) -> None: ...

class StageStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StageStatusReply(_message.Message):
    __slots__ = ("job_id", "phase", "json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    phase: str
    json: str
    def __init__(self, job_id: _Optional[str] = ..., phase: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...
