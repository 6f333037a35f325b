"""Large payloads of the Stage service as a stream of `Blob`s: pieces of at most 4 MiB, the first with JSON."""

from __future__ import annotations

import json

from pac.v1 import stage_pb2

BLOB_BYTES = 4 * 1024 * 1024 - 4096


def blobs(data: bytes, meta: dict) -> list[stage_pb2.Blob]:
    """`data` in pieces of at most 4 MiB; the first carries `meta` as JSON."""
    view = memoryview(data)
    pieces = [view[i:i + BLOB_BYTES] for i in range(0, len(view), BLOB_BYTES)] or [view]
    return [stage_pb2.Blob(json=json.dumps(meta) if i == 0 else "", data=bytes(p)) for i, p in enumerate(pieces)]
