"""Large payloads of the Stage service as streams of chunks of at most 4 MiB (pac.limits.MAX_CHUNK_BYTES).

A stream holds one or more records; a record's first chunk carries its header (a message field that is
set), every chunk a piece of its bytes.
"""

from __future__ import annotations

from google.protobuf.message import Message

from pac.errors import PacError
from pac.limits import MAX_CHUNK_BYTES


class ChunkError(PacError):
    """A chunk stream that does not hold what it should; the message says what is wrong."""


def chunked(kind: type[Message], header_field: str, header: Message, data_field: str, data: bytes) -> list[Message]:
    """One record: `data` in pieces of at most 4 MiB, the first of them with `header`."""
    view = memoryview(data)
    pieces = [view[i:i + MAX_CHUNK_BYTES] for i in range(0, len(view), MAX_CHUNK_BYTES)] or [view]
    chunks = [kind(**{data_field: bytes(piece)}) for piece in pieces]
    getattr(chunks[0], header_field).CopyFrom(header)
    getattr(chunks[0], header_field).SetInParent()  # present even when every field has its default
    return chunks


async def read_chunked(stream, header_field: str, data_field: str,
                       limit: int | None = None) -> list[tuple[Message, bytes]]:
    """Every record of a chunk stream, as (header, bytes); ChunkError past `limit` bytes in all."""
    records: list[tuple[Message, list[bytes]]] = []
    total = 0
    async for chunk in stream:
        total += len(getattr(chunk, data_field))
        if limit is not None and total > limit:
            raise ChunkError(f"the stream carries more than {limit} bytes")
        if chunk.HasField(header_field):
            records.append((getattr(chunk, header_field), []))
        elif not records:
            raise ChunkError(f"the first {type(chunk).__name__} of a record must carry its {header_field}")
        records[-1][1].append(getattr(chunk, data_field))
    return [(header, b"".join(parts)) for header, parts in records]


async def read_one(stream, header_field: str, data_field: str, limit: int | None = None) -> tuple[Message, bytes]:
    """The one record of a chunk stream."""
    records = await read_chunked(stream, header_field, data_field, limit)
    if len(records) != 1:
        raise ChunkError(f"expected one record (its first chunk with the {header_field}), got {len(records)}")
    return records[0]
