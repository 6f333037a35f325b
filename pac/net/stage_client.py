"""The controller's calls to the devices of one job (pac.v1.Stage), in the controller's own terms.

Every call has a deadline; a failed call is a TrainingFailed that names the device, what was asked and
what it answered. Tensors travel as safetensors bytes in Blob streams (pac/net/blobs.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import torch

from pac.errors import TrainingFailed
from pac.limits import STAGE_MESSAGE_BYTES, grpc_size_options
from pac.net.blobs import blobs, read_blobs
from pac.security import Identity, secure_channel
from pac.v1 import stage_pb2, stage_pb2_grpc
from pac.worker.spec import MicroIn
from pac.worker.tensors import pack, unpack

CHANNEL_OPTIONS = grpc_size_options(STAGE_MESSAGE_BYTES)
LOAD_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Loaded:
    held_bytes: int  # what the device holds for the job (weights, side network, optimiser)
    load_s: float
    fingerprint: str  # of the backbone checkpoint the device loaded


@dataclass(frozen=True)
class StepResult:
    loss: float  # this replica's share of the mini-batch loss (last stage; else 0)
    grad_square_norm: float  # of the stage's gradients
    events: list[dict]  # the measured timeline of the replica's operations


@dataclass(frozen=True)
class StepReport:
    step: int
    loss: float
    samples: int
    seconds: float
    allreduce_s: float


class StageClient:
    """Channels to every device of one job, opened on first use and closed by `close`."""

    def __init__(self, job_id: str, nodes: dict[str, str], identity: Identity | None) -> None:
        self.job_id, self.nodes, self.identity = job_id, nodes, identity  # nodes: address -> node id
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> stage_pb2_grpc.StageStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) if self.identity is None \
                else secure_channel(address, self.identity, self.nodes.get(address), CHANNEL_OPTIONS)
            self._channels[address] = channel
        return stage_pb2_grpc.StageStub(channel)

    async def _call(self, address: str, what: str, coroutine):
        try:
            return await coroutine
        except grpc.aio.AioRpcError as error:
            raise TrainingFailed(f"{what} on {address} failed ({error.code().name}): {error.details()}") from None

    async def load(self, address: str, what: str, meta: dict, data: bytes, phase2: bool = False) -> Loaded:
        """A phase-1 stage (or, `phase2`, a phase-2 member): its spec in `meta`, its tensors packed in `data`."""
        stub = self._stub(address)
        method = stub.LoadPhase2 if phase2 else stub.Load
        reply = await self._call(address, what, method(iter(blobs(data, meta)), timeout=LOAD_TIMEOUT_S))
        return Loaded(reply.held_bytes, reply.load_s, reply.fingerprint)

    async def run_step(self, address: str, what: str, step: int, loss_total: int, micro: list[MicroIn],
                       apply: bool, max_grad_norm: float, timeout_s: float) -> StepResult:
        request = stage_pb2.RunStepRequest(job_id=self.job_id, step=step, loss_total=loss_total,
                                           timeout_s=timeout_s, apply=apply, max_grad_norm=max_grad_norm)
        for m in micro:
            message = stage_pb2.MicroBatch(index=m.index, rows=m.rows)
            if m.batch is not None:
                message.tensors = pack(m.batch)
                message.sample_keys.extend(m.keys)
                message.lengths.extend(n for row in m.lengths for n in row)
            request.micro_batches.append(message)
        reply = await self._call(address, what, self._stub(address).RunStep(request, timeout=timeout_s * 4))
        return StepResult(reply.loss, reply.grad_square_norm, json.loads(reply.events_json))

    async def apply_step(self, address: str, step: int, clip: float) -> None:
        request = stage_pb2.ApplyStepRequest(job_id=self.job_id, step=step, clip_coefficient=clip)
        await self._call(address, f"optimiser step {step}", self._stub(address).ApplyStep(request, timeout=60.0))

    async def get_state(self, address: str) -> dict[str, torch.Tensor]:
        """The trained tensors and optimiser state the device holds."""
        request = stage_pb2.GetStateRequest(job_id=self.job_id, optimizer=True)
        _, data = await self._call(address, "reading the trained state",
                                   read_blobs(self._stub(address).GetState(request, timeout=300.0)))
        return unpack(data)

    async def gather_cache(self, address: str, plan: dict) -> tuple[int, int]:
        """The member fetches its samples' cached states; returns (bytes fetched, bytes it held itself)."""
        request = stage_pb2.GatherCacheRequest(job_id=self.job_id, timeout_s=600.0, plan_json=json.dumps(plan))
        reply = await self._call(address, "gathering the cache", self._stub(address).GatherCache(request,
                                                                                              timeout=1800.0))
        return reply.fetched_bytes, reply.local_bytes

    async def train_epoch(self, address: str, epoch: int, first_step: int, steps: list[dict],
                          timeout_s: float) -> AsyncIterator[StepReport]:
        """A phase-2 epoch on one member: its report after every step."""
        request = stage_pb2.TrainEpochRequest(job_id=self.job_id, epoch=epoch, first_step=first_step,
                                              steps_json=json.dumps(steps))
        try:
            async for r in self._stub(address).TrainEpoch(request, timeout=timeout_s):
                yield StepReport(r.step, r.loss, r.samples, r.seconds, r.allreduce_s)
        except grpc.aio.AioRpcError as error:
            raise TrainingFailed(f"phase 2 epoch {epoch + 1} on {address} failed ({error.code().name}): "
                                 f"{error.details()}") from None

    async def renew(self, address: str, lease_s: float) -> None:
        request = stage_pb2.RenewRequest(job_id=self.job_id, lease_s=lease_s)
        await self._call(address, "renewing the job", self._stub(address).Renew(request, timeout=max(1.0, lease_s / 4)))

    async def release(self, address: str, keep_cache: bool) -> None:
        request = stage_pb2.ReleaseRequest(job_id=self.job_id, keep_cache=keep_cache)
        await self._call(address, "releasing the job", self._stub(address).Release(request, timeout=30.0))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
