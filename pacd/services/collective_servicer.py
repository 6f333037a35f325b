"""Collective servicer: ring frames from the previous rank into the local inbox, and controller-started
AllReduce operations (tests, benchmarks). Thin: the ring itself is pac/collective, the transport pac/net.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import torch

from pac.collective import CollectiveError, InvalidGroup, RingGroup, RingMessage, RingOpen
from pac.net.convert.collective import (
    group_from_proto,
    inline_from_proto,
    inline_to_proto,
)
from pac.net.node import PeerNode, node_for
from pac.net.ring_inbox import InboxClosed
from pac.v1 import collective_pb2, collective_pb2_grpc
from pac.wire import DTYPES, WireError

MAX_TIMEOUT_S = 3600.0


class CollectiveServicer(collective_pb2_grpc.CollectiveServicer):
    def __init__(self, node: PeerNode) -> None:
        self.node = node

    async def RingPush(self, request_iterator, context):
        opening = await anext(aiter(request_iterator), None)
        if not isinstance(opening, RingOpen):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a ring stream must start with a RingOpen frame")
        if not opening.group_id or not 0 < opening.timeout_s <= MAX_TIMEOUT_S:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ring stream: group_id must be set and timeout_s in (0, {MAX_TIMEOUT_S:g}]",
            )
        key = (opening.group_id, opening.op_id)
        who = f"rank {opening.from_rank} ({context.peer()})"
        if not 1 <= opening.streams <= 16 or opening.stream >= opening.streams:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ring stream: stream must be < streams <= 16")
        try:
            inbox = self.node.rings.get(key, opening.streams)
        except InboxClosed as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"op {opening.op_id} already ended here: {error}")
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if opening.stream in inbox.producers:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"op {opening.op_id} stream {opening.stream} is taken")
        inbox.producers.add(opening.stream)
        deadline = asyncio.get_running_loop().time() + opening.timeout_s
        frames = 0
        try:
            await inbox.put(opening.stream, opening, deadline)
            async for frame in request_iterator:
                if not isinstance(frame, RingMessage):
                    raise ValueError("a ring stream carries one RingOpen frame, then only data frames")
                await inbox.put(opening.stream, frame, deadline)
                frames += 1
        except InboxClosed as error:
            await context.abort(grpc.StatusCode.ABORTED, f"this member stopped op {opening.op_id}: {error}")
        except TimeoutError:
            inbox.break_(f"{who} was still sending at the deadline")
            self.node.rings.discard(key)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"op {opening.op_id}: this member did not take the data within {opening.timeout_s:g} s; "
                "it stalled or was never started",
            )
        except ValueError as error:
            inbox.break_(f"{who} sent a bad frame: {error}")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except asyncio.CancelledError:
            inbox.break_(f"{who} broke its stream mid-operation: it died, was stopped or gave up")
            raise
        return collective_pb2.RingAck(frames=frames)

    async def AllReduce(self, request, context):
        try:
            group = group_from_proto(request.group)
            tensors = _request_tensors(request, group)
        except (InvalidGroup, WireError, ValueError) as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        iterations = max(1, request.iterations)
        barrier = [torch.zeros(1)]
        seconds: list[float] = []
        result = tensors
        try:
            for iteration in range(iterations):
                op_id = request.op_id + 2 * iteration
                result = [t.clone() for t in tensors]
                if iterations > 1 or request.synthetic.numel:
                    await self.node.allreduce_(barrier, group, op_id + 1)
                started = time.perf_counter()
                await self.node.allreduce_(result, group, op_id)
                seconds.append(time.perf_counter() - started)
        except CollectiveError as error:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(error, TimeoutError) else grpc.StatusCode.ABORTED
            await context.abort(code, str(error))
        reply = collective_pb2.AllReduceReply(seconds=seconds, checksum=sum(float(t.double().sum()) for t in result))
        if request.return_result:
            reply.result.extend(inline_to_proto(t) for t in result)
        return reply


def _request_tensors(request, group: RingGroup) -> list[torch.Tensor]:
    if request.tensors:
        return [inline_from_proto(t) for t in request.tensors]
    synthetic = request.synthetic
    if synthetic.dtype not in DTYPES or not DTYPES[synthetic.dtype].is_floating_point:
        raise ValueError(f"synthetic tensors need a floating-point dtype, not {synthetic.dtype!r}")
    generator = torch.Generator().manual_seed(synthetic.seed + group.rank)
    return [torch.randn(synthetic.numel, generator=generator).to(DTYPES[synthetic.dtype])]


def servicer(daemon) -> CollectiveServicer:
    return CollectiveServicer(node_for(daemon))
