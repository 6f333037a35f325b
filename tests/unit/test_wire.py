"""Headers are validated before any byte is trusted; payloads are cut into chunks of at most 4 MiB; ring frames
are written and read by hand in exactly protobuf's wire format."""

import pytest
import torch

from pac.collective import CollectiveError, InvalidGroup, RingMessage, RingOpen
from pac.errors import PacError
from pac.net.convert.collective import ring_frame_from_bytes, ring_frame_to_bytes
from pac.net.node import SendFailed
from pac.net.tensor_inbox import BufferFull, TensorNotReceived
from pac.v1 import collective_pb2
from pac.wire import MAX_CHUNK_BYTES, TensorHeader, WireError, chunks, decode, encode
from pac.wire.header import PayloadAssembler


def _header(**changes) -> TensorHeader:
    fields = dict(job_id="job", step=0, micro_batch=0, kind="hidden", dtype="float32", shape=(2, 3), codec="none",
                  payload_bytes=24)
    fields.update(changes)
    return TensorHeader(**fields)


def test_valid_header_has_its_key():
    assert _header().key == ("job", 0, 0, "hidden")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(job_id=""), "empty job_id"),
        (dict(step=-1), "must be >= 0"),
        (dict(dtype="complex64"), "unknown dtype"),
        (dict(shape=(2, -3)), "negative dimension"),
        (dict(codec="lz4"), "unknown codec"),
        (dict(payload_bytes=25), "payload_bytes is 25 but codec none gives 24"),
        (dict(dtype="int64", codec="int8", payload_bytes=14), "floating-point tensors only"),
    ],
)
def test_bad_headers_are_refused_with_the_reason(changes, message):
    with pytest.raises(WireError, match=message):
        _header(**changes)


def test_chunks_are_at_most_the_limit_and_cover_the_payload():
    payload = memoryview(bytes(range(256)) * 4097)
    pieces = list(chunks(payload, 1000))
    assert all(len(piece) <= 1000 for piece in pieces)
    assert b"".join(bytes(piece) for piece in pieces) == bytes(payload)
    assert len(list(chunks(memoryview(b"")))) == 1


def test_a_large_tensor_travels_in_chunks_under_4_mib():
    tensor = torch.randn(3 * 1024 * 1024)  # 12 MiB
    header, payload = encode(tensor, job_id="j", step=0, micro_batch=0, kind="side")
    pieces = list(chunks(payload))
    assert len(pieces) == header.num_chunks == 4
    assert all(len(piece) <= MAX_CHUNK_BYTES <= 4 * 1024 * 1024 for piece in pieces)
    assembler = PayloadAssembler(header)
    for piece in pieces:
        assembler.add(bytes(piece))
    assert torch.equal(decode(header, assembler.payload()), tensor)


def test_assembler_refuses_too_many_or_too_few_bytes():
    header = _header()
    assembler = PayloadAssembler(header)
    assembler.add(b"x" * 20)
    with pytest.raises(WireError, match="stream ended after 20 of 24 bytes"):
        assembler.payload()
    with pytest.raises(WireError, match="more than the 24 bytes"):
        assembler.add(b"x" * 5)


def test_decode_refuses_a_payload_of_the_wrong_size():
    with pytest.raises(WireError, match="payload has 3 bytes"):
        decode(_header(), b"abc")


# ---- RingFrame's hand-written codec (pac/net/convert/collective.py) must be protobuf's wire format, both ways ----


@pytest.mark.parametrize("bucket, step, segment, nbytes", [
    (0, 0, 0, 0), (0, 0, 0, 4), (1, 5, 300, 3000), (2**31, 6, 2**20, 1 << 20), (0, 3, 0, 4 * 1024 * 1024 - 4096)])
def test_ring_data_frames_are_exactly_protobufs_bytes(bucket, step, segment, nbytes):
    values = torch.randn(nbytes // 4)
    payload = memoryview(values.numpy()).cast("B")
    ours = ring_frame_to_bytes(RingMessage(bucket, step, segment, payload))
    theirs = collective_pb2.RingFrame(data=collective_pb2.RingData(
        bucket=bucket, step=step, segment=segment, payload=bytes(payload))).SerializeToString()
    assert ours == theirs
    back = ring_frame_from_bytes(theirs)
    assert (back.bucket, back.step, back.segment, bytes(back.payload)) == (bucket, step, segment, bytes(payload))
    assert isinstance(back.payload, memoryview)  # read in place, not copied


def test_ring_open_frames_and_unexpected_fields_go_through_protobuf():
    opening = RingOpen("job/dp", 7, 1, 4, "abcd", 30.0, 1, 2)
    assert ring_frame_from_bytes(ring_frame_to_bytes(opening)) == opening
    assert ring_frame_from_bytes(b"") is None
    # a data frame with its fields out of the usual order still reads the same
    reordered = b"\x12\x09" + b"\x22\x03abc" + b"\x18\x02" + b"\x08\x01"
    back = ring_frame_from_bytes(reordered)
    assert (back.bucket, back.step, back.segment, bytes(back.payload)) == (1, 0, 2, b"abc")


def test_a_truncated_ring_frame_is_a_wire_error():
    frame = ring_frame_to_bytes(RingMessage(1, 2, 3, b"x" * 100))
    with pytest.raises(WireError, match="not a RingFrame"):
        ring_frame_from_bytes(frame[:-10])


@pytest.mark.parametrize("error", [WireError, CollectiveError, InvalidGroup, SendFailed, BufferFull, TensorNotReceived])
def test_errors_of_this_layer_are_pac_errors(error):
    assert issubclass(error, PacError)
