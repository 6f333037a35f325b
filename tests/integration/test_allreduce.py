"""Ring AllReduce over gRPC: sums for world sizes 1-5 and every training dtype, real pacd daemons with
mutual TLS, and a member killed mid-operation making the others fail within the deadline."""

import asyncio
import time

import grpc
import pytest
import torch

from bench.devserver import LocalServers
from pac.collective import PeerFailed, RingGroup
from pac.net.convert.collective import group_to_proto, inline_from_proto, inline_to_proto
from pac.v1 import collective_pb2, collective_pb2_grpc

TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_allreduce_over_grpc_equals_the_sum(n):
    generator = torch.Generator().manual_seed(n)
    shapes = [(3,), (257, 5), (1,), (40_000,)]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]

    async def scenario():
        async with LocalServers(n) as servers:
            members = tuple(servers.addresses)
            inputs = [[torch.randn(s, generator=generator).to(d) for s in shapes for d in dtypes] for _ in range(n)]
            groups = [RingGroup("job/dp", r, members, 20.0, segment_bytes=16 * 1024, bucket_bytes=64 * 1024)
                      for r in range(n)]
            results = await asyncio.gather(*[servers.nodes[r].allreduce(inputs[r], groups[r], 1) for r in range(n)])
            for index, sample in enumerate(inputs[0]):
                expected = sum(inputs[r][index].double() for r in range(n))
                tolerance = TOLERANCE[sample.dtype]
                for rank in range(n):
                    assert results[rank][index].dtype == sample.dtype
                    assert torch.allclose(results[rank][index].double(), expected, atol=tolerance * n, rtol=tolerance)
            assert all(len(node.rings) == 0 for node in servers.nodes)  # nothing left behind

    asyncio.run(scenario())


def test_consecutive_operations_reuse_the_connections():
    async def scenario():
        async with LocalServers(3) as servers:
            members = tuple(servers.addresses)
            for op in range(5):
                tensors = [[torch.full((1000,), float(op + r))] for r in range(3)]
                results = await asyncio.gather(*[
                    servers.nodes[r].allreduce(tensors[r], RingGroup("g", r, members, 10.0), op) for r in range(3)])
                assert all(res[0].eq(3 * op + 3).all() for res in results)

    asyncio.run(scenario())


def test_a_member_that_never_joins_fails_the_others_within_the_deadline():
    async def scenario():
        async with LocalServers(3) as servers:
            members = tuple(servers.addresses)
            started = time.monotonic()
            results = await asyncio.gather(
                *[servers.nodes[r].allreduce([torch.ones(10_000)], RingGroup("g", r, members, 1.0), 1) for r in (0, 1)],
                return_exceptions=True,
            )
            return results, time.monotonic() - started

    results, elapsed = asyncio.run(scenario())
    assert elapsed < 1.0 + 1.0
    assert all(isinstance(r, TimeoutError | PeerFailed) for r in results), results
    assert any("deadline" in str(r) for r in results)


def test_ring_push_takes_frames_from_a_plain_protobuf_client():
    """The daemon reads RingFrame by hand; a client that serialises with protobuf must be understood alike."""
    async def scenario():
        async with LocalServers(1) as servers:
            payload = torch.arange(1000, dtype=torch.float32).numpy().tobytes()
            frames = [
                collective_pb2.RingFrame(open=collective_pb2.RingOpen(
                    group_id="g", op_id=3, from_rank=1, world_size=2, layout="L", timeout_s=5.0, stream=0,
                    streams=1)),
                collective_pb2.RingFrame(data=collective_pb2.RingData(bucket=0, step=0, segment=0, payload=payload)),
                collective_pb2.RingFrame(data=collective_pb2.RingData(bucket=0, step=1, segment=4, payload=b"")),
            ]
            async with grpc.aio.insecure_channel(servers.addresses[0]) as channel:
                ack = await collective_pb2_grpc.CollectiveStub(channel).RingPush(iter(frames), timeout=5.0)
                queue = servers.nodes[0].rings.get(("g", 3), 1).queues[0]
                received = [queue.get_nowait() for _ in range(3)]
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await collective_pb2_grpc.CollectiveStub(channel).RingPush(iter(frames[1:]), timeout=5.0)
            return ack, received, refused.value

    ack, (opening, first, second), refused = asyncio.run(scenario())
    assert ack.frames == 2
    assert (opening.group_id, opening.op_id, opening.from_rank, opening.streams) == ("g", 3, 1, 1)
    assert (first.step, first.segment, bytes(first.payload)) == (0, 0, torch.arange(1000.0).numpy().tobytes())
    assert (second.step, second.segment, bytes(second.payload)) == (1, 4, b"")
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "RingOpen" in refused.details()


def _requests(addresses, numel, timeout_s, iterations=1, op_id=10):
    members = tuple(addresses)
    return [
        collective_pb2.AllReduceRequest(
            group=group_to_proto(RingGroup("job/dp", r, members, timeout_s)), op_id=op_id,
            synthetic=collective_pb2.SyntheticTensors(numel=numel, dtype="float32", seed=7), iterations=iterations)
        for r in range(len(members))
    ]


def test_real_daemons_allreduce_over_mutual_tls(daemons, cluster):
    from pac.security import secure_channel

    running = [daemons.start(secure=True) for _ in range(3)]
    inputs = [torch.randn(5, 7) for _ in running]

    async def scenario():
        channels = [secure_channel(d.address, cluster.identity, d.node_id) for d in running]
        try:
            members = tuple(d.address for d in running)
            replies = await asyncio.gather(*[
                collective_pb2_grpc.CollectiveStub(c).AllReduce(collective_pb2.AllReduceRequest(
                    group=group_to_proto(RingGroup("job/dp", r, members, 20.0)), op_id=1,
                    tensors=[inline_to_proto(inputs[r])], return_result=True))
                for r, c in enumerate(channels)])
            big = await asyncio.gather(*[collective_pb2_grpc.CollectiveStub(c).AllReduce(q)
                                         for c, q in zip(channels, _requests(members, 3_000_000, 20.0), strict=True)])
        finally:
            for channel in channels:
                await channel.close()
        return replies, big

    replies, big = asyncio.run(scenario())
    for reply in replies:
        assert torch.allclose(inline_from_proto(reply.result[0]), sum(inputs), atol=1e-5)
    assert len({round(r.checksum, 3) for r in big}) == 1


def test_killing_a_member_mid_allreduce_makes_the_others_raise_within_the_deadline(daemons, cluster):
    from pac.security import secure_channel

    running = [daemons.start(secure=True) for _ in range(3)]
    deadline_s = 6.0

    async def scenario():
        channels = [secure_channel(d.address, cluster.identity, d.node_id) for d in running]
        try:  # a small operation first: the daemons import their collective code on its first call
            await asyncio.gather(*[collective_pb2_grpc.CollectiveStub(c).AllReduce(q) for c, q in zip(
                channels, _requests([d.address for d in running], 16, 30.0, op_id=1), strict=True)])
            calls = [collective_pb2_grpc.CollectiveStub(c).AllReduce(q)
                     for c, q in zip(channels, _requests([d.address for d in running], 8_000_000, deadline_s, 50),
                                     strict=True)]
            await asyncio.sleep(1.5)  # tensors generated, operations under way
            assert not any(call.done() for call in calls)
            running[2].kill()
            killed_at = time.monotonic()
            outcomes = []
            for call in calls[:2]:
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await call
                outcomes.append((error.value, time.monotonic() - killed_at))
            return outcomes
        finally:
            for channel in channels:
                await channel.close()

    outcomes = asyncio.run(scenario())
    for error, elapsed in outcomes:
        assert elapsed < deadline_s + 2.0
        assert error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert "AllReduce op" in error.details() and "job/dp" in error.details()
