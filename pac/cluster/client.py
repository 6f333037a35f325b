"""The controller's side of the Stage API: channels to every device of a job, and blob streams."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from pac.cluster.blobs import blobs
from pac.errors import PacError
from pac.security import Identity, secure_channel
from pac.v1 import stage_pb2_grpc

# A stage's initial tensors and a phase-2 member's whole side network travel in one Load stream.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
LOAD_TIMEOUT_S = 900.0


class TrainingFailed(PacError):
    """A device failed during the job; the message names it and what it said."""


@dataclass(frozen=True)
class Device:
    node_id: str
    address: str
    hostname: str = ""
    memory_budget_bytes: int = 0


class Stages:
    """Channels to every device of the job."""

    def __init__(self, devices: list[Device], identity: Identity | None) -> None:
        self.devices = {d.address: d for d in devices}
        self.identity = identity
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> stage_pb2_grpc.StageStub:
        channel = self._channels.get(address)
        if channel is None:
            node = self.devices[address].node_id if address in self.devices else None
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) if self.identity is None \
                else secure_channel(address, self.identity, node, CHANNEL_OPTIONS)
            self._channels[address] = channel
        return stage_pb2_grpc.StageStub(channel)

    async def call(self, address: str, what: str, coroutine):
        try:
            return await coroutine
        except grpc.aio.AioRpcError as error:
            raise TrainingFailed(f"{what} on {address} failed ({error.code().name}): {error.details()}") from None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels = {}


def blob_stream(data: bytes, meta: dict):
    return iter(blobs(data, meta))


async def collect_blobs(call) -> tuple[dict, bytes]:
    meta, parts = None, []
    async for blob in call:
        if meta is None:
            meta = json.loads(blob.json or "{}")
        parts.append(blob.data)
    return meta or {}, b"".join(parts)
