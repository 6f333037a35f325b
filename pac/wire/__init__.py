"""Tensors on the wire: a header, a codec, and chunks of at most 4 MiB.

Pure logic, no grpc: `encode` turns a tensor into a `TensorHeader` and a payload, `chunks` cuts the payload,
`decode` turns header + payload back into a tensor. The gRPC edges (pac/net, pacd/services/tensor_servicer.py) only
move these bytes.
"""

from pac.wire.codecs import CODECS, Codec, codec_for, int8_error_bound
from pac.wire.dtypes import DTYPES, dtype_name
from pac.wire.errors import WireError
from pac.wire.frame import decode, encode
from pac.wire.header import MAX_CHUNK_BYTES, TensorHeader, TensorKind, chunks

__all__ = [
    "CODECS",
    "DTYPES",
    "MAX_CHUNK_BYTES",
    "Codec",
    "TensorHeader",
    "TensorKind",
    "WireError",
    "chunks",
    "codec_for",
    "decode",
    "dtype_name",
    "encode",
    "int8_error_bound",
]
