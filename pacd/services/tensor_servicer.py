"""TensorStream servicer: receive tensors into the daemon's buffer, hand them out, relay them to peers.

Thin: checks what it is sent, converts with pac/net/convert/tensor.py and delegates to the PeerNode.
"""

from __future__ import annotations

import asyncio

import grpc

from pac.net.convert.tensor import header_from_proto, header_to_proto, key_from_proto
from pac.net.node import PeerNode, SendFailed, node_for, send_encoded
from pac.net.tensor_inbox import BufferFull, DuplicateTensor, TensorNotReceived
from pac.v1 import tensor_pb2, tensor_pb2_grpc
from pac.wire import WireError, chunks, codec_for, decode, encode
from pac.wire.header import PayloadAssembler

DEFAULT_WAIT_S = 60.0


DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


def _remaining(context: grpc.aio.ServicerContext, fallback: float = DEFAULT_WAIT_S) -> float:
    """How long to wait for buffer room: leave the sender time to hear why it was refused."""
    remaining = context.time_remaining()
    return fallback if remaining is None else max(remaining - max(0.25, 0.2 * remaining), 0.0)


async def _refuse(context: grpc.aio.ServicerContext, request_iterator, code: grpc.StatusCode, message: str):
    """Abort with `code`, after reading (and dropping) what the sender still has in flight.

    Aborting while the client is mid-write makes gRPC report a transport error (INTERNAL) to the sender
    instead of our status; reading the rest first (bounded, nothing kept) delivers the status intact.
    """
    drained = 0
    try:
        async for message_in in request_iterator:
            drained += len(message_in.data)
            if drained > DRAIN_LIMIT_BYTES:
                break
    except (grpc.aio.AioRpcError, asyncio.CancelledError, grpc.RpcError):
        pass
    await context.abort(code, message)


class TensorStreamServicer(tensor_pb2_grpc.TensorStreamServicer):
    def __init__(self, node: PeerNode) -> None:
        self.node = node

    async def Send(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first chunk of a tensor must carry its header")
        try:
            header = header_from_proto(first.header)
        except WireError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            # Nothing more is read from the stream until there is room: flow control holds the sender.
            await self.node.inbox.reserve(header, _remaining(context))
        except BufferFull as error:
            await _refuse(context, request_iterator, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except DuplicateTensor as error:
            await _refuse(context, request_iterator, grpc.StatusCode.ALREADY_EXISTS, str(error))
        delivered = False
        try:
            assembler = PayloadAssembler(header)
            assembler.add(first.data)
            async for message in request_iterator:
                if message.HasField("header"):
                    raise WireError(f"tensor {header.key_text()}: a second header arrived mid-tensor")
                assembler.add(message.data)
            tensor = decode(header, assembler.payload())
            await self.node.inbox.deliver(header, tensor)
            delivered = True
        except WireError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        finally:
            if not delivered:
                await asyncio.shield(self.node.inbox.cancel(header))
        return tensor_pb2.SendReply(payload_bytes=header.payload_bytes)

    async def Take(self, request, context):
        try:
            key = key_from_proto(request.key)
            codec = codec_for(request.codec or "none")
        except WireError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            header, tensor = await self.node.inbox.take(key, request.timeout_s or _remaining(context))
        except TensorNotReceived as error:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        try:
            header, payload = encode(
                tensor, job_id=header.job_id, step=header.step, micro_batch=header.micro_batch,
                kind=header.kind, codec=codec.name,
            )
        except WireError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        for index, piece in enumerate(chunks(payload)):
            message = tensor_pb2.TensorChunk(data=bytes(piece))
            if index == 0:
                message.header.CopyFrom(header_to_proto(header))
            yield message

    async def Relay(self, request, context):
        try:
            key = key_from_proto(request.key)
            codec_for(request.codec or "none")
        except WireError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if not request.target:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "relay: target is empty; give host:port")
        timeout = request.timeout_s or _remaining(context)
        try:
            header, tensor = await self.node.inbox.take(key, timeout)
        except TensorNotReceived as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            header, payload = encode(
                tensor, job_id=header.job_id, step=header.step, micro_batch=header.micro_batch,
                kind=header.kind, codec=request.codec or "none",
            )
            await send_encoded(self.node.channels.get(request.target), header, payload, timeout, request.target)
        except WireError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except SendFailed as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return tensor_pb2.RelayReply(payload_bytes=header.payload_bytes, seconds=loop.time() - started)


def servicer(daemon) -> TensorStreamServicer:
    return TensorStreamServicer(node_for(daemon))
