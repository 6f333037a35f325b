"""Ring AllReduce logic over the in-memory transport: sums, schedule, deadlines, failures, mismatches."""

import asyncio
import time

import pytest
import torch

from pac.collective import (
    CollectiveTimeout,
    GroupMismatch,
    InvalidGroup,
    MemoryHub,
    PeerFailed,
    RingGroup,
    allreduce,
    allreduce_,
    partition,
    ring_steps,
)

TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _group(rank, n, **changes) -> RingGroup:
    settings = dict(step_timeout_s=5.0, segment_bytes=64, bucket_bytes=256)
    settings.update(changes)
    return RingGroup("job/dp", rank, tuple(f"m{i}" for i in range(n)), **settings)


async def _run_all(inputs, n, **changes):
    hub = MemoryHub()
    return await asyncio.gather(
        *[allreduce(inputs[rank], _group(rank, n, **changes), 7, hub.transport()) for rank in range(n)]
    )


def test_partition_covers_everything_with_uneven_tails():
    assert partition(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert partition(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]


@pytest.mark.parametrize("n", [2, 3, 5])
def test_every_step_sends_what_was_received_the_step_before(n):
    for rank in range(n):
        steps = ring_steps(rank, n)
        assert len(steps) == 2 * (n - 1)
        assert all(steps[i].send_chunk == steps[i - 1].recv_chunk for i in range(1, len(steps)))
        # the previous rank sends at step t exactly what this rank expects
        before = ring_steps((rank - 1) % n, n)
        assert all(b.send_chunk == s.recv_chunk for b, s in zip(before, steps, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_allreduce_equals_the_elementwise_sum(n, dtype):
    generator = torch.Generator().manual_seed(n)
    shapes = [(1,), (7,), (13, 3), (0,), (101,), (2, 2, 2)]  # uneven sizes, some smaller than the world
    inputs = [[torch.randn(shape, generator=generator).to(dtype) for shape in shapes] for _ in range(n)]
    results = asyncio.run(_run_all(inputs, n))
    for index in range(len(shapes)):
        expected = sum(inputs[rank][index].double() for rank in range(n))
        for rank in range(n):
            out = results[rank][index]
            assert out.dtype == dtype and out.shape == inputs[rank][index].shape
            assert torch.allclose(out.double(), expected, atol=TOLERANCE[dtype] * n, rtol=TOLERANCE[dtype])
            assert torch.equal(out, results[0][index])  # every rank holds the very same bits


@pytest.mark.parametrize("wire", ["bf16", "fp16"])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_a_16_bit_wire_sums_float32_in_float32_and_every_rank_ends_alike(n, wire):
    """Float32 gradients travel rounded to 16 bits and are summed in float32: each of the n - 1 hops of a
    partial sum and the final all-gather round once (at most n units of 16-bit rounding of the summed
    magnitudes), and every rank holds the very same bits."""
    generator = torch.Generator().manual_seed(n)
    shapes = [(1,), (7,), (13, 3), (0,), (101,)]
    inputs = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(n)]
    results = asyncio.run(_run_all(inputs, n, wire=wire))
    unit = {"bf16": 2.0 ** -8, "fp16": 2.0 ** -11}[wire]  # relative rounding of one 16-bit conversion
    for index in range(len(shapes)):
        expected = sum(inputs[rank][index].double() for rank in range(n))
        scale = sum(inputs[rank][index].double().abs() for rank in range(n))
        for rank in range(n):
            out = results[rank][index]
            assert out.dtype == torch.float32
            assert torch.all((out.double() - expected).abs() <= n * unit * scale + 1e-6)
            assert torch.equal(out, results[0][index])
    exact = asyncio.run(_run_all(inputs, n))
    assert any(not torch.equal(a, b) for a, b in zip(results[0], exact[0], strict=True))  # it did round


def test_members_with_different_wires_fail_with_a_mismatch():
    async def run():
        hub = MemoryHub()
        tensors = [[torch.ones(8)], [torch.ones(8)]]
        return await asyncio.gather(*[allreduce(tensors[r], _group(r, 2, wire="bf16" if r else "fp32"), 1,
                                                hub.transport()) for r in range(2)], return_exceptions=True)

    errors = asyncio.run(run())
    assert all(isinstance(e, GroupMismatch) for e in errors), errors


def test_inputs_stay_untouched_and_in_place_variant_overwrites():
    inputs = [[torch.full((5,), float(rank + 1))] for rank in range(3)]
    before = [t[0].clone() for t in inputs]
    asyncio.run(_run_all(inputs, 3))
    assert all(torch.equal(inputs[r][0], before[r]) for r in range(3))

    async def in_place():
        hub = MemoryHub()
        await asyncio.gather(*[allreduce_(inputs[r], _group(r, 3), 1, hub.transport()) for r in range(3)])

    asyncio.run(in_place())
    assert all(inputs[r][0].tolist() == [6.0] * 5 for r in range(3))


def test_a_member_that_never_comes_makes_the_others_time_out_within_the_deadline():
    async def scenario():
        hub = MemoryHub()
        started = time.monotonic()
        tasks = [allreduce([torch.ones(100)], _group(r, 3, step_timeout_s=0.5), 1, hub.transport()) for r in (0, 1)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, time.monotonic() - started

    results, elapsed = asyncio.run(scenario())
    assert elapsed < 0.5 + 0.5
    assert all(isinstance(r, CollectiveTimeout | PeerFailed) for r in results)
    timeouts = [r for r in results if isinstance(r, CollectiveTimeout)]
    assert timeouts and "deadline" in str(timeouts[0]) and "died or stalled" in str(timeouts[0])


def test_members_that_disagree_on_the_tensors_fail_with_a_mismatch():
    async def scenario():
        hub = MemoryHub()
        return await asyncio.gather(
            allreduce([torch.ones(10)], _group(0, 2), 1, hub.transport()),
            allreduce([torch.ones(11)], _group(1, 2), 1, hub.transport()),
            return_exceptions=True,
        )

    results = asyncio.run(scenario())
    assert any(isinstance(r, GroupMismatch) and "same tensors" in str(r) for r in results)
    assert all(isinstance(r, GroupMismatch | PeerFailed) for r in results)


def test_integer_tensors_are_refused():
    with pytest.raises(GroupMismatch, match="floating-point"):
        asyncio.run(allreduce([torch.arange(3)], _group(0, 2), 1, MemoryHub().transport()))


@pytest.mark.parametrize(
    "changes", [dict(rank=3), dict(members=("a", "a")), dict(step_timeout_s=0), dict(group_id=""), dict(streams=0)]
)
def test_bad_groups_are_refused(changes):
    settings = dict(group_id="g", rank=0, members=("a", "b"))
    settings.update(changes)
    with pytest.raises(InvalidGroup):
        RingGroup(**settings)


def test_segments_are_large_but_every_step_still_pipelines():
    from pac.collective.group import MAX_SEGMENT_BYTES
    from pac.collective.schedule import MIN_SEGMENT_BYTES, SEGMENTS_PER_STEP, segment_elements

    mib = 1024 * 1024
    # 64 MiB of float32 over 4 ranks: 16 MiB chunks in 4 MiB (capped) messages
    assert segment_elements(16 * mib, 4, 4, MAX_SEGMENT_BYTES) * 4 == MAX_SEGMENT_BYTES // 4 * 4
    # 16 MiB over 4 ranks: 4 MiB chunks in SEGMENTS_PER_STEP pieces of 1 MiB
    assert segment_elements(4 * mib, 4, 4, MAX_SEGMENT_BYTES) * 4 == 4 * mib // SEGMENTS_PER_STEP
    # tiny buckets are not cut below the floor, and an explicit smaller maximum wins
    assert segment_elements(1000, 4, 4, MAX_SEGMENT_BYTES) * 4 == MIN_SEGMENT_BYTES
    assert segment_elements(16 * mib, 4, 4, 64) == 16
    assert segment_elements(10, 3, 2, 1) == 1
