from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "cluster_id", "api_version", "software_version", "memory_budget_bytes", "total_memory_bytes", "accelerator", "cpu_count", "hostname", "paired", "insecure", "disk_free_bytes", "revocation_number")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PAIRED_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_NUMBER_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    cluster_id: str
    api_version: str
    software_version: str
    memory_budget_bytes: int
    total_memory_bytes: int
    accelerator: str
    cpu_count: int
    hostname: str
    paired: bool
    insecure: bool
    disk_free_bytes: int
    revocation_number: int
    def __init__(self, node_id: _Optional[str] = ..., cluster_id: _Optional[str] = ..., api_version: _Optional[str] = ..., software_version: _Optional[str] = ..., memory_budget_bytes: _Optional[int] = ..., total_memory_bytes: _Optional[int] = ..., accelerator: _Optional[str] = ..., cpu_count: _Optional[int] = ..., hostname: _Optional[str] = ..., paired: _Optional[bool] = ..., insecure: _Optional[bool] = ..., disk_free_bytes: _Optional[int] = ..., revocation_number: _Optional[int] = ...) -> None: ...
