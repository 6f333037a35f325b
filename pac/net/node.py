"""PeerNode: one daemon's side of tensor streaming and collectives, the API the training stages call.

It owns the receive buffer, the ring inboxes and the channels to peers. The servicers in
pacd/services/{tensor,collective}_servicer.py fill the buffers; stage code calls the methods below (async on the
daemon's event loop, or through `SyncPeer` from a worker thread).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import torch

from pac.collective import RingGroup, allreduce, allreduce_
from pac.errors import PacError
from pac.net.channels import ChannelFactory, ChannelPool, insecure_channel
from pac.net.convert.tensor import header_to_proto
from pac.net.memory import reuse_large_buffers
from pac.net.ring_inbox import RingInboxes
from pac.net.ring_transport import GrpcRingTransport
from pac.net.tensor_inbox import DEFAULT_BUFFER_BYTES, TensorInbox
from pac.v1 import tensor_pb2, tensor_pb2_grpc
from pac.wire import TensorHeader, chunks, encode

T = TypeVar("T")


class SendFailed(PacError, RuntimeError):
    """A tensor could not be delivered; the message says to whom and why."""


@dataclass(frozen=True)
class NodeConfig:
    receive_buffer_bytes: int = DEFAULT_BUFFER_BYTES  # room for received tensors not yet taken by a stage
    ring_queue_frames: int = 8  # ring frames buffered per operation before the previous rank is slowed


class PeerNode:
    def __init__(self, channel_factory: ChannelFactory = insecure_channel, config: NodeConfig | None = None):
        self.config = config or NodeConfig()
        reuse_large_buffers()  # ring frames reuse heap pages instead of faulting in fresh ones (pac/net/memory.py)
        self.inbox = TensorInbox(self.config.receive_buffer_bytes)
        self.rings = RingInboxes(self.config.ring_queue_frames)
        self.channels = ChannelPool(channel_factory)
        self.ring_transport = GrpcRingTransport(self.channels, self.rings)

    async def send_tensor(
        self,
        target: str,
        tensor: torch.Tensor,
        *,
        job_id: str,
        step: int,
        micro_batch: int,
        kind: str,
        codec: str = "none",
        timeout_s: float = 60.0,
    ) -> TensorHeader:
        """Deliver a tensor to the daemon at `target`; returns once it holds it (decoded) in its buffer."""
        header, payload = encode(tensor, job_id=job_id, step=step, micro_batch=micro_batch, kind=kind, codec=codec)
        await send_encoded(self.channels.get(target), header, payload, timeout_s, target)
        return header

    async def receive_tensor(
        self, job_id: str, step: int, micro_batch: int, kind: str, timeout_s: float = 60.0
    ) -> torch.Tensor:
        """Take a tensor another daemon sent here, waiting up to timeout_s for it (TensorNotReceived)."""
        _, tensor = await self.inbox.take((job_id, step, micro_batch, str(kind)), timeout_s)
        return tensor

    async def allreduce(self, tensors: list[torch.Tensor], group: RingGroup, op_id: int) -> list[torch.Tensor]:
        """Elementwise sum of `tensors` across the group (see pac.collective.allreduce)."""
        return await allreduce(tensors, group, op_id, self.ring_transport)

    async def allreduce_(self, tensors: list[torch.Tensor], group: RingGroup, op_id: int) -> None:
        """In place: each tensor becomes the group's sum (gradients after backward)."""
        await allreduce_(tensors, group, op_id, self.ring_transport)

    async def close(self) -> None:
        await self.channels.close()


async def send_encoded(
    channel: grpc.aio.Channel, header: TensorHeader, payload: memoryview, timeout_s: float, target: str = "peer"
) -> float:
    """Stream an encoded tensor over `channel`; returns the seconds it took until acknowledged."""
    started = time.perf_counter()
    call = tensor_pb2_grpc.TensorStreamStub(channel).Send(timeout=timeout_s)
    try:
        first = True
        for piece in chunks(payload):
            message = tensor_pb2.TensorChunk(data=bytes(piece))
            if first:
                message.header.CopyFrom(header_to_proto(header))
                first = False
            await call.write(message)
        await call.done_writing()
        await call
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
        # A write that races the receiver's abort can fail with a transport error (INTERNAL) while the
        # call itself ended with the receiver's status: report the call's status when it has one.
        code, details = await call.code(), await call.details()
        if isinstance(error, grpc.aio.AioRpcError) and code in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL):
            code, details = error.code(), error.details()
        raise SendFailed(
            f"sending tensor {header.key_text()} to {target} failed ({code.name}): {details}"
        ) from None
    return time.perf_counter() - started


_NODES: weakref.WeakKeyDictionary[object, PeerNode] = weakref.WeakKeyDictionary()


def node_for(daemon: object) -> PeerNode:
    """The PeerNode of a daemon, made on first use with the daemon's way of opening peer channels.

    The daemon's `channel(address) -> grpc.aio.Channel` (pacd.daemon.Daemon: mutual TLS as this node, to
    any device of its cluster) is used when it has one; otherwise plain-text channels (tests).
    """
    node = _NODES.get(daemon)
    if node is None:
        factory = getattr(daemon, "channel", None) or insecure_channel
        node = _NODES[daemon] = PeerNode(factory)
        on_shutdown = getattr(daemon, "on_shutdown", None)
        if on_shutdown is not None:
            on_shutdown(node.close)
    return node


def attach_node(daemon: object, node: PeerNode) -> None:
    """Give a daemon a PeerNode made with a non-default NodeConfig, before its services register."""
    _NODES[daemon] = node


class SyncPeer:
    """Blocking wrappers around a PeerNode for code that runs in a worker thread, not on the event loop."""

    def __init__(self, node: PeerNode, loop: asyncio.AbstractEventLoop) -> None:
        self.node, self.loop = node, loop

    def _run(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def send_tensor(self, target: str, tensor: torch.Tensor, **header) -> TensorHeader:
        return self._run(self.node.send_tensor(target, tensor, **header))

    def receive_tensor(self, job_id: str, step: int, micro_batch: int, kind: str, timeout_s: float = 60.0):
        return self._run(self.node.receive_tensor(job_id, step, micro_batch, kind, timeout_s))

    def allreduce(self, tensors: list[torch.Tensor], group: RingGroup, op_id: int) -> list[torch.Tensor]:
        return self._run(self.node.allreduce(tensors, group, op_id))

