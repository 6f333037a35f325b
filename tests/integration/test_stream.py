"""Tensor streaming between daemons: every dtype and codec, buffers and flow control, real pacd with mTLS."""

import asyncio
import time

import grpc
import pytest
import torch

from bench.devserver import LocalServers
from pac.net.convert.tensor import key_to_proto
from pac.net.node import SendFailed
from pac.net.tensor_inbox import TensorNotReceived
from pac.v1 import tensor_pb2, tensor_pb2_grpc
from pac.wire import int8_error_bound

FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def _check_codec(sent: torch.Tensor, received: torch.Tensor, codec: str) -> None:
    assert received.dtype == sent.dtype and received.shape == sent.shape
    if codec == "none":
        assert torch.equal(received, sent)
    elif codec == "fp16":
        assert torch.allclose(received.float(), sent.float(), rtol=2**-10, atol=2**-24)
    else:
        assert ((received.float() - sent.float()).abs() <= int8_error_bound(sent)).all()


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
def test_every_float_dtype_round_trips_between_two_daemons(codec):
    async def scenario():
        async with LocalServers(2) as servers:
            sender, receiver = servers.nodes
            for step, dtype in enumerate(FLOATS):
                tensor = (torch.randn(3, 1000, 1500) * 4).to(dtype)  # > 4 MiB: several chunks
                await sender.send_tensor(servers.addresses[1], tensor, job_id="j", step=step, micro_batch=1,
                                         kind="hidden", codec=codec)
                _check_codec(tensor, await receiver.receive_tensor("j", step, 1, "hidden", 5.0), codec)

    asyncio.run(scenario())


def test_integer_and_bool_tensors_travel_exactly():
    async def scenario():
        async with LocalServers(2) as servers:
            sender, receiver = servers.nodes
            for step, tensor in enumerate([torch.arange(12).reshape(3, 4), torch.tensor([True, False]),
                                           torch.randint(0, 255, (9,), dtype=torch.uint8)]):
                await sender.send_tensor(servers.addresses[1], tensor, job_id="j", step=step, micro_batch=0,
                                         kind="labels")
                assert torch.equal(await receiver.receive_tensor("j", step, 0, "labels", 5.0), tensor)

    asyncio.run(scenario())


def test_relay_and_take_move_a_tensor_daemon_to_daemon():
    async def scenario():
        async with LocalServers(2) as servers:
            a, _ = servers.nodes
            tensor = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
            await a.send_tensor(servers.addresses[0], tensor, job_id="j", step=0, micro_batch=0, kind="side")
            key = key_to_proto("j", 0, 0, "side")
            async with grpc.aio.insecure_channel(servers.addresses[0]) as channel:
                reply = await tensor_pb2_grpc.TensorStreamStub(channel).Relay(
                    tensor_pb2.RelayRequest(key=key, target=servers.addresses[1], codec="fp16", timeout_s=5))
            assert reply.payload_bytes == 64 * 512 * 2 and reply.seconds > 0
            async with grpc.aio.insecure_channel(servers.addresses[1]) as channel:
                chunks = [c async for c in tensor_pb2_grpc.TensorStreamStub(channel).Take(
                    tensor_pb2.TakeRequest(key=key, timeout_s=5))]
            assert chunks[0].header.dtype == "float32" and list(chunks[0].header.shape) == [64, 512]
            received = torch.frombuffer(bytearray(b"".join(c.data for c in chunks)), dtype=torch.float32)
            # fp16 on the way: half a unit in the last place, relative for normal values, 2**-25 absolute
            # below fp16's smallest normal (2**-14), where a few of 32768 normal samples fall
            assert torch.allclose(received.reshape(64, 512), tensor, rtol=2**-11, atol=2**-25)

    asyncio.run(scenario())


def test_a_slow_receiver_slows_the_sender_instead_of_filling_memory():
    async def scenario():
        async with LocalServers(2, receive_buffer_bytes=5 * 1024 * 1024) as servers:
            sender, receiver = servers.nodes
            tensor = torch.randn(1024 * 1024)  # 4 MiB: one fits in the buffer, two do not
            await sender.send_tensor(servers.addresses[1], tensor, job_id="j", step=0, micro_batch=0, kind="hidden")
            second = asyncio.create_task(sender.send_tensor(
                servers.addresses[1], tensor, job_id="j", step=0, micro_batch=1, kind="hidden", timeout_s=10))
            await asyncio.sleep(0.5)
            assert not second.done()  # held back by flow control, not refused
            assert receiver.inbox.used_bytes <= receiver.inbox.limit_bytes
            await receiver.receive_tensor("j", 0, 0, "hidden", 5.0)
            await asyncio.wait_for(second, 5.0)
            assert torch.equal(await receiver.receive_tensor("j", 0, 1, "hidden", 5.0), tensor)

    asyncio.run(scenario())


def test_a_full_buffer_is_a_clear_error_at_the_senders_deadline():
    async def scenario():
        async with LocalServers(2, receive_buffer_bytes=5 * 1024 * 1024) as servers:
            sender, _ = servers.nodes
            tensor = torch.randn(1024 * 1024)
            await sender.send_tensor(servers.addresses[1], tensor, job_id="j", step=0, micro_batch=0, kind="hidden")
            started = time.monotonic()
            with pytest.raises(SendFailed, match="RESOURCE_EXHAUSTED.*receive buffer full.*not consuming"):
                await sender.send_tensor(servers.addresses[1], tensor, job_id="j", step=0, micro_batch=1,
                                         kind="hidden", timeout_s=1.0)
            assert time.monotonic() - started < 3.0
            with pytest.raises(SendFailed, match="more than this daemon's whole receive buffer"):
                await sender.send_tensor(servers.addresses[1], torch.randn(2 * 1024 * 1024), job_id="j", step=1,
                                         micro_batch=0, kind="hidden")

    asyncio.run(scenario())


def test_bad_headers_and_missing_tensors_get_clear_statuses():
    async def scenario():
        async with LocalServers(1) as servers:
            async with grpc.aio.insecure_channel(servers.addresses[0]) as channel:
                stub = tensor_pb2_grpc.TensorStreamStub(channel)
                header = tensor_pb2.TensorHeader(job_id="j", kind="hidden", dtype="float32", shape=[4], codec="none",
                                                 payload_bytes=99)
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.Send(iter([tensor_pb2.TensorChunk(header=header, data=b"")]))
                assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "payload_bytes is 99 but codec none gives 16" in error.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.Send(iter([tensor_pb2.TensorChunk(data=b"abc")]))
                assert "must carry its header" in error.value.details()
            with pytest.raises(TensorNotReceived, match="never arrived"):
                await servers.nodes[0].receive_tensor("j", 5, 0, "side_grad", timeout_s=0.2)

    asyncio.run(scenario())


def test_streaming_between_real_daemons_with_mutual_tls(daemons, cluster):
    """A tensor goes daemon to daemon (Relay) over mutual TLS, and comes back out (Take) int8-coded."""
    from pac.security import secure_channel

    a, b = daemons.start(secure=True), daemons.start(secure=True)
    tensor = torch.randn(256, 1024)

    async def scenario():
        async with secure_channel(a.address, cluster.identity, a.node_id) as to_a:
            from pac.net.node import send_encoded
            from pac.wire import encode

            header, payload = encode(tensor, job_id="j", step=3, micro_batch=0, kind="hidden")
            await send_encoded(to_a, header, payload, 10.0)
            key = key_to_proto("j", 3, 0, "hidden")
            await tensor_pb2_grpc.TensorStreamStub(to_a).Relay(
                tensor_pb2.RelayRequest(key=key, target=b.address, codec="int8", timeout_s=10))
        async with secure_channel(b.address, cluster.identity, b.node_id) as to_b:
            chunks = [c async for c in tensor_pb2_grpc.TensorStreamStub(to_b).Take(
                tensor_pb2.TakeRequest(key=key, timeout_s=10))]
        received = torch.frombuffer(bytearray(b"".join(c.data for c in chunks)), dtype=torch.float32)
        _check_codec(tensor, received.reshape(tensor.shape), "int8")

    asyncio.run(scenario())
