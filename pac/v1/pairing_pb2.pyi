from pac.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginPairingRequest(_message.Message):
    __slots__ = ("controller_name",)
    CONTROLLER_NAME_FIELD_NUMBER: _ClassVar[int]
    controller_name: str
    def __init__(self, controller_name: _Optional[str] = ...) -> None: ...

class BeginPairingReply(_message.Message):
    __slots__ = ("info", "csr_pem", "salt")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.NodeInfo
    csr_pem: bytes
    salt: bytes
    def __init__(self, info: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ..., csr_pem: _Optional[bytes] = ..., salt: _Optional[bytes] = ...) -> None: ...

class CompletePairingRequest(_message.Message):
    __slots__ = ("cluster_id", "certificate_pem", "ca_certificate_pem", "proof")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    proof: bytes
    def __init__(self, cluster_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class CompletePairingReply(_message.Message):
    __slots__ = ("proof", "info")
    PROOF_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    proof: bytes
    info: _common_pb2.NodeInfo
    def __init__(self, proof: _Optional[bytes] = ..., info: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ...) -> None: ...
