"""Large payloads of the Stage service as streams of `Blob`s: pieces of at most 4 MiB.

A stream holds one or more records; each record's first Blob carries its metadata as JSON (a
non-empty `json` field), the rest only bytes.
"""

from __future__ import annotations

import json

from pac.errors import PacError
from pac.limits import MAX_CHUNK_BYTES
from pac.v1 import stage_pb2

BLOB_BYTES = MAX_CHUNK_BYTES


class BlobError(PacError):
    """A Blob stream that does not hold what it should; the message says what is wrong."""


def blobs(data: bytes, meta: dict) -> list[stage_pb2.Blob]:
    """One record: `data` in pieces of at most 4 MiB; the first carries `meta` as JSON."""
    view = memoryview(data)
    pieces = [view[i:i + BLOB_BYTES] for i in range(0, len(view), BLOB_BYTES)] or [view]
    return [stage_pb2.Blob(json=json.dumps(meta) if i == 0 else "", data=bytes(p)) for i, p in enumerate(pieces)]


async def read_records(stream) -> list[tuple[dict, bytes]]:
    """Every record of a Blob stream, as (metadata, bytes)."""
    records: list[tuple[dict, list[bytes]]] = []
    async for blob in stream:
        if blob.json:
            try:
                meta = json.loads(blob.json)
            except json.JSONDecodeError as error:
                raise BlobError(f"a Blob's JSON is malformed: {error}") from None
            records.append((meta, []))
        elif not records:
            raise BlobError("the first Blob must carry the JSON metadata")
        records[-1][1].append(blob.data)
    return [(meta, b"".join(parts)) for meta, parts in records]


async def read_blobs(stream) -> tuple[dict, bytes]:
    """The one record of a Blob stream."""
    records = await read_records(stream)
    if len(records) != 1:
        raise BlobError(f"expected one record (a Blob with the JSON metadata first), got {len(records)}")
    return records[0]
