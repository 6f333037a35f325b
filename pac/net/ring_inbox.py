"""Per-operation queues between the RingPush servicer (producer) and the local ring member (consumer).

Either side may come first: the previous rank can start streaming before this daemon's stage has called
AllReduce. A link has `streams` parallel streams, each with its own bounded queue; data frame i of the
link travels on stream i % streams, so the consumer reads the queues round robin and gets frames in order.
Bounded queues make a member that is slow to reduce slow its predecessor through gRPC flow control. A
failure on either side is recorded so that the other side stops at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from pac.errors import PacError

OpKey = tuple[str, int]  # (group_id, op_id)


class InboxClosed(PacError, RuntimeError):
    """The local member finished or gave up on this operation; the stream must stop."""


class Broken:
    """Marker the producer leaves when the previous rank's stream broke."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class RingInbox:
    def __init__(self, streams: int, capacity: int) -> None:
        self.streams = streams
        self.queues: list[asyncio.Queue] = [asyncio.Queue(capacity) for _ in range(streams)]
        self.producers: set[int] = set()
        self.closed_reason: str | None = None
        self._closed = asyncio.Event()

    async def put(self, stream: int, item, deadline: float) -> None:
        """Queue an item; InboxClosed if the consumer is gone, TimeoutError at the loop-time deadline."""
        if self.closed_reason is not None:
            raise InboxClosed(self.closed_reason)
        queue = self.queues[stream]
        if not queue.full():
            queue.put_nowait(item)
            return
        put = asyncio.ensure_future(queue.put(item))
        closed = asyncio.ensure_future(self._closed.wait())
        timeout = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait({put, closed}, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not put.done():
                put.cancel()
        if not put.done() or put.cancelled():
            if self.closed_reason is not None:
                raise InboxClosed(self.closed_reason)
            raise TimeoutError("the local member did not take the data before the deadline")

    def break_(self, reason: str) -> None:
        """The link is broken (a stream failed, or our own sending failed): wake the consumer with why."""
        for queue in self.queues:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(Broken(reason))

    def close(self, reason: str) -> None:
        """Consumer side: no more items will be taken."""
        self.closed_reason = reason
        self._closed.set()


class RingInboxes:
    """All ring inboxes of one daemon, created on first use by either side."""

    def __init__(self, capacity: int = 4, remember_closed: int = 1024) -> None:
        self.capacity = capacity
        self._open: dict[OpKey, RingInbox] = {}
        self._closed: OrderedDict[OpKey, str] = OrderedDict()
        self._remember = remember_closed

    def get(self, key: OpKey, streams: int) -> RingInbox:
        """The inbox of an operation; InboxClosed if it already ended here, ValueError on a streams mismatch."""
        if key in self._closed:
            raise InboxClosed(self._closed[key])
        inbox = self._open.get(key)
        if inbox is None:
            inbox = self._open[key] = RingInbox(streams, self.capacity)
        elif inbox.streams != streams:
            raise ValueError(f"op {key[1]} of group {key[0]}: {streams} streams announced, {inbox.streams} known")
        return inbox

    def close(self, key: OpKey, reason: str) -> None:
        inbox = self._open.pop(key, None)
        if inbox is not None:
            inbox.close(reason)
        self._closed[key] = reason
        while len(self._closed) > self._remember:
            self._closed.popitem(last=False)

    def discard(self, key: OpKey) -> None:
        """Producer gave up before any consumer came (deadline); forget the inbox."""
        self._open.pop(key, None)

    def __len__(self) -> int:
        return len(self._open)
