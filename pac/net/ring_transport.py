"""The ring's transport over gRPC: client streams (RingPush) to the next rank, an inbox from the previous.

A link is `group.streams` parallel RingPush calls: an asyncio gRPC write waits for its message to leave
before the next may start, so one stream idles between messages; two or more keep the connection busy.
Data frame i goes on stream i % streams and the receiver reads them back in that order.

Failures travel both ways: cancelling our outgoing calls breaks the next rank's inbox, closing our inbox
makes the servicer abort the previous rank's calls, so one member's failure ends the whole ring within
about a round trip; the group's deadline covers members that stall without failing.
"""

from __future__ import annotations

import asyncio

import grpc

from pac.collective import PeerFailed, RingGroup, RingMessage, RingOpen, check_open
from pac.net.channels import ChannelPool
from pac.net.convert.collective import ring_frame_to_bytes
from pac.net.ring_inbox import Broken, RingInbox, RingInboxes
from pac.v1 import collective_pb2

_DONE = object()
RING_PUSH = "/pac.v1.Collective/RingPush"


def ring_push(channel: grpc.aio.Channel):
    """The RingPush method with the hand-written frame codec (see pac/net/convert/collective.py) instead of protobuf's."""
    return channel.stream_unary(
        RING_PUSH,
        request_serializer=ring_frame_to_bytes,
        response_deserializer=collective_pb2.RingAck.FromString,
        _registered_method=True,
    )


class GrpcRingTransport:
    def __init__(self, channels: ChannelPool, inboxes: RingInboxes) -> None:
        self.channels = channels
        self.inboxes = inboxes

    async def open(self, group: RingGroup, op_id: int, layout: str) -> GrpcRingLink:
        inbox = self.inboxes.get((group.group_id, op_id), group.streams)
        push = ring_push(self.channels.get(group.members[group.next_rank]))
        link = GrpcRingLink(self.inboxes, inbox, push, group, op_id, layout)
        link.start()
        return link


class GrpcRingLink:
    def __init__(self, inboxes: RingInboxes, inbox: RingInbox, push, group: RingGroup, op_id: int, layout: str):
        self._inboxes, self._inbox, self._push = inboxes, inbox, push
        self.group, self.op_id, self.layout = group, op_id, layout
        self._where = f"AllReduce op {op_id} of group {group.group_id}"
        self._calls: list = []
        self._queues: list[asyncio.Queue] = []
        self._writers: list[asyncio.Task] = []
        self._sent = 0
        self._received = 0
        self._opened = False
        self._failure: PeerFailed | None = None

    def start(self) -> None:
        group = self.group
        for stream in range(group.streams):
            call = self._push(timeout=group.step_timeout_s + 5.0)
            opening = RingOpen(
                group.group_id, self.op_id, group.rank, group.world_size, self.layout, group.step_timeout_s,
                stream, group.streams,
            )
            queue: asyncio.Queue = asyncio.Queue(2)
            queue.put_nowait(opening)
            self._calls.append(call)
            self._queues.append(queue)
            self._writers.append(asyncio.create_task(self._write_loop(call, queue)))

    async def _write_loop(self, call, queue: asyncio.Queue) -> None:
        try:
            while (frame := await queue.get()) is not _DONE:
                await call.write(frame)
            await call.done_writing()
            await call
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            self._failure = await self._describe(call, error)
            self._inbox.break_(str(self._failure))  # wake our own receiver: the operation cannot finish
            raise self._failure from None

    async def _describe(self, call, error: BaseException) -> PeerFailed:
        peer = self.group.describe(self.group.next_rank)
        if isinstance(error, grpc.aio.AioRpcError):
            code, details = error.code(), error.details()
        else:
            code, details = await call.code(), await call.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            return PeerFailed(f"{self._where}: lost {peer}: {details}")
        return PeerFailed(f"{self._where}: {peer} ended the stream ({code.name}): {details}")

    async def send(self, message: RingMessage) -> None:
        if self._failure is not None:
            raise self._failure
        stream = self._sent % len(self._queues)
        self._sent += 1
        await self._queues[stream].put(message)

    async def recv(self) -> RingMessage:
        if not self._opened:
            for stream in range(self._inbox.streams):
                check_open(self.group, self.op_id, self.layout, await self._take(stream))
            self._opened = True
        stream = self._received % self._inbox.streams
        self._received += 1
        return await self._take(stream)

    async def _take(self, stream: int):
        item = await self._inbox.queues[stream].get()
        if isinstance(item, Broken):
            raise PeerFailed(f"{self._where} ({self.group.describe()}): {item.reason}")
        return item

    async def finish(self) -> None:
        try:
            for queue in self._queues:
                await queue.put(_DONE)
            await asyncio.gather(*self._writers)
        finally:
            self._inboxes.close((self.group.group_id, self.op_id), f"{self.group.describe()} finished the op")

    async def abort(self, reason: str) -> None:
        for call in self._calls:
            call.cancel()
        for writer in self._writers:
            writer.cancel()
        self._inboxes.close((self.group.group_id, self.op_id), reason)
