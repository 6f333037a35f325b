"""The small interface the ring algorithm talks to, and an in-memory implementation for tests.

A transport opens, per AllReduce operation, a `RingLink`: an ordered stream of messages to the next rank
and one from the previous rank. The gRPC implementation lives in pac/net/ring_transport.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from pac.collective.errors import GroupMismatch, PeerFailed
from pac.collective.group import RingGroup


@dataclass(frozen=True)
class RingOpen:
    """First message of every ring stream: who sends, for which operation, over which tensor layout."""

    group_id: str
    op_id: int
    from_rank: int
    world_size: int
    layout: str  # fingerprint of the bucket layout (dtypes and sizes); all members must agree
    timeout_s: float  # the sender's deadline for the whole operation
    stream: int = 0  # which parallel stream of the link this opens
    streams: int = 1  # data message i of the link travels on stream i % streams


@dataclass(frozen=True)
class RingMessage:
    bucket: int  # which flat bucket of the operation
    step: int  # ring step 0 .. 2(n-1)-1
    segment: int  # piece of the step's chunk
    payload: bytes | bytearray | memoryview  # the raw values, in the bucket's dtype


class RingLink(Protocol):
    async def send(self, message: RingMessage) -> None:
        """Queue a message for the next rank; waits while the next rank is slow to take them."""

    async def recv(self) -> RingMessage:
        """The next message from the previous rank, in order; PeerFailed if that rank broke off."""

    async def finish(self) -> None:
        """Everything is sent: wait until the next rank has received it all."""

    async def abort(self, reason: str) -> None:
        """Give up: tell both neighbours so that they fail now rather than at their deadline."""


class RingTransport(Protocol):
    async def open(self, group: RingGroup, op_id: int, layout: str) -> RingLink:
        """Connect to the next rank of `group` and announce operation `op_id` over tensors `layout`."""


def check_open(group: RingGroup, op_id: int, layout: str, received: RingOpen) -> None:
    """Raise GroupMismatch unless the previous rank's announcement matches this rank's own view."""
    where = f"AllReduce op {op_id} of group {group.group_id} ({group.describe()})"
    if received.world_size != group.world_size:
        raise GroupMismatch(
            f"{where}: rank {received.from_rank} thinks the group has {received.world_size} members, this "
            f"rank has {group.world_size}; every member must be given the same ring order"
        )
    if received.from_rank != group.prev_rank:
        raise GroupMismatch(
            f"{where}: got a stream from rank {received.from_rank}, expected rank {group.prev_rank}; "
            "members disagree on the ring order"
        )
    if received.streams != group.streams:
        raise GroupMismatch(
            f"{where}: {group.describe(received.from_rank)} uses {received.streams} streams per link, this rank "
            f"{group.streams}; every member must be given the same group settings"
        )
    if received.layout != layout:
        raise GroupMismatch(
            f"{where}: {group.describe(received.from_rank)} reduces tensors with layout {received.layout}, "
            f"this rank {layout}; every member must pass the same tensors (dtypes and sizes, in order)"
        )


class _Failure:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class MemoryHub:
    """In-process ring transport: one bounded queue per (group, op, receiving rank)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._queues: dict[tuple[str, int, int], asyncio.Queue] = {}
        self._failed: set[tuple[str, int, int]] = set()

    def queue(self, key: tuple[str, int, int]) -> asyncio.Queue:
        if key not in self._queues:
            self._queues[key] = asyncio.Queue(self.capacity)
        return self._queues[key]

    def fail(self, key: tuple[str, int, int], reason: str) -> None:
        self._failed.add(key)
        queue = self.queue(key)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_Failure(reason))

    def transport(self) -> MemoryTransport:
        return MemoryTransport(self)


class MemoryTransport:
    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub

    async def open(self, group: RingGroup, op_id: int, layout: str) -> MemoryLink:
        link = MemoryLink(self.hub, group, op_id, layout)
        opening = RingOpen(
            group.group_id, op_id, group.rank, group.world_size, layout, group.step_timeout_s, 0, group.streams
        )
        await link.send(opening)
        return link


class MemoryLink:
    def __init__(self, hub: MemoryHub, group: RingGroup, op_id: int, layout: str) -> None:
        self.hub, self.group, self.op_id, self.layout = hub, group, op_id, layout
        self.out_key = (group.group_id, op_id, group.next_rank)
        self.in_key = (group.group_id, op_id, group.rank)
        self._opened = False

    async def send(self, message) -> None:
        if self.out_key in self.hub._failed:
            raise PeerFailed(f"{self.group.describe(self.group.next_rank)} gave up on op {self.op_id}")
        if isinstance(message, RingMessage):  # a wire copies the values; so does this stand-in for one
            message = RingMessage(message.bucket, message.step, message.segment, bytes(message.payload))
        await self.hub.queue(self.out_key).put(message)

    async def recv(self) -> RingMessage:
        queue = self.hub.queue(self.in_key)
        if not self._opened:
            first = await queue.get()
            self._raise_if_failure(first)
            check_open(self.group, self.op_id, self.layout, first)
            self._opened = True
        message = await queue.get()
        self._raise_if_failure(message)
        return message

    def _raise_if_failure(self, item) -> None:
        if isinstance(item, _Failure):
            raise PeerFailed(
                f"AllReduce op {self.op_id} of group {self.group.group_id}: "
                f"{self.group.describe(self.group.prev_rank)} broke off: {item.reason}"
            )

    async def finish(self) -> None:
        return None

    async def abort(self, reason: str) -> None:
        self.hub.fail(self.out_key, reason)
        self.hub._failed.add(self.in_key)
