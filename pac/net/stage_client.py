"""The controller's calls to the devices of one job (pac.v1.Stage), in the controller's own terms.

Every call has a deadline; a failed call is a TrainingFailed that names the device, what was asked and
what it answered. Tensors travel as safetensors bytes, large ones in chunks (pac/net/chunks.py); the
messages convert in pac/net/convert/stage.py. `fetch_records` is a device's call to another device.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import torch

from pac.errors import TrainingFailed
from pac.limits import STAGE_MESSAGE_BYTES, grpc_size_options
from pac.net.chunks import ChunkError, chunked, read_chunked, read_one
from pac.net.convert import stage as convert
from pac.security import Identity, secure_channel
from pac.v1 import stage_pb2, stage_pb2_grpc
from pac.worker.errors import JobError
from pac.worker.spec import EpochStep, GatherPlan, MicroIn, Phase2Spec, StageSpec, StepReport
from pac.worker.tensors import unpack

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


class StageClient:
    """Channels to every device of one job, opened on first use and closed by `close`."""

    def __init__(self, job_id: str, nodes: dict[str, str], identity: Identity | None) -> None:
        self.job_id, self.nodes, self.identity = job_id, nodes, identity  # nodes: address -> node id
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) if self.identity is None \
                else secure_channel(address, self.identity, self.nodes.get(address), CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    def _stub(self, address: str) -> stage_pb2_grpc.StageStub:
        return stage_pb2_grpc.StageStub(self._channel(address))

    async def _call(self, address: str, what: str, coroutine):
        try:
            return await coroutine
        except grpc.aio.AioRpcError as error:
            raise TrainingFailed(f"{what} on {address} failed ({error.code().name}): {error.details()}") from None

    async def load(self, address: str, what: str, spec: StageSpec | Phase2Spec, data: bytes) -> Loaded:
        """A phase-1 stage replica or a phase-2 member: its spec, its tensors packed in `data`."""
        stub = self._stub(address)
        if isinstance(spec, StageSpec):
            method, chunks = stub.Load, chunked(stage_pb2.LoadStageChunk, "spec", convert.stage_spec_to_proto(spec),
                                                "tensors", data)
        else:
            method, chunks = stub.LoadPhase2, chunked(stage_pb2.LoadPhase2Chunk, "spec",
                                                      convert.phase2_spec_to_proto(spec), "tensors", data)
        reply = await self._call(address, what, method(iter(chunks), timeout=LOAD_TIMEOUT_S))
        return Loaded(reply.held_bytes, reply.load_s, reply.fingerprint)

    async def run_step(self, address: str, what: str, step: int, loss_total: int, micro: list[MicroIn],
                       apply: bool, max_grad_norm: float, timeout_s: float,
                       apply_before: float | None = None) -> StepResult:
        """One step on the stage replica at `address`; `apply_before`: the previous step's clip coefficient,
        its optimiser step taken first (a job of several stages)."""
        request = stage_pb2.RunStepRequest(job_id=self.job_id, step=step, loss_total=loss_total,
                                           timeout_s=timeout_s, apply=apply, max_grad_norm=max_grad_norm,
                                           micro_batches=[convert.micro_to_proto(m) for m in micro])
        if apply_before is not None:
            request.apply_before = apply_before
        reply = await self._call(address, what, self._stub(address).RunStep(request, timeout=timeout_s * 4))
        return StepResult(reply.loss, reply.grad_square_norm, convert.events_from_proto(reply.events))

    async def run_ahead(self, address: str, what: str, step: int, micro: list[MicroIn], timeout_s: float) -> None:
        """Queue `step`'s frozen forwards on the stage replica at `address` (RunStep with ahead)."""
        request = stage_pb2.RunStepRequest(job_id=self.job_id, step=step, timeout_s=timeout_s, ahead=True,
                                           micro_batches=[convert.micro_to_proto(m) for m in micro])
        await self._call(address, what, self._stub(address).RunStep(request, timeout=60.0))

    async def evaluate_step(self, address: str, what: str, step: int, micro: list[MicroIn], timeout_s: float) -> None:
        """Evaluation micro-batches through the stage replica at `address` (RunStep with evaluate)."""
        request = stage_pb2.RunStepRequest(job_id=self.job_id, step=step, timeout_s=timeout_s, evaluate=True,
                                           micro_batches=[convert.micro_to_proto(m) for m in micro])
        await self._call(address, what, self._stub(address).RunStep(request, timeout=timeout_s * 4))

    async def evaluation_records(self, address: str, stage: int, keys: list[str], timeout_s: float
                                 ) -> dict[str, tuple[bytes, list]]:
        """Records of the evaluation shard of stage `stage` on the device at `address`: key -> (bytes, shapes)."""
        try:
            return await fetch_records(self._channel(address), address, self.job_id, stage, keys, timeout_s,
                                       evaluation=True)
        except JobError as error:
            raise TrainingFailed(str(error)) from None

    async def apply_step(self, address: str, step: int, clip: float) -> None:
        request = stage_pb2.ApplyStepRequest(job_id=self.job_id, step=step, clip_coefficient=clip)
        await self._call(address, f"optimiser step {step}", self._stub(address).ApplyStep(request, timeout=60.0))

    async def get_state(self, address: str) -> dict[str, torch.Tensor]:
        """The trained tensors and optimiser state the device holds."""
        return (await self.get_state_steps(address))[0]

    async def get_state_steps(self, address: str, timeout_s: float = 300.0) -> tuple[dict[str, torch.Tensor], int]:
        """The trained tensors and optimiser state the device holds, and the optimiser steps they took."""
        request = stage_pb2.GetStateRequest(job_id=self.job_id, optimizer=True)
        try:
            info, data = await self._call(address, "reading the trained state", read_one(
                self._stub(address).GetState(request, timeout=timeout_s), "info", "tensors"))
        except ChunkError as error:
            raise TrainingFailed(f"the trained state from {address}: {error}") from None
        return unpack(data), info.steps_done

    async def ping(self, address: str, timeout_s: float) -> str | None:
        """None if the device answers (Stage.Status) within `timeout_s`; else why not."""
        try:
            await self._stub(address).Status(stage_pb2.StageStatusRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no answer within {timeout_s:g} s"
            return f"{error.code().name}: {error.details()}"
        return None

    async def gather_cache(self, address: str, plan: GatherPlan) -> tuple[int, int, int]:
        """The member fetches its samples' cached states; returns (bytes fetched, bytes it held itself,
        samples no device held, which it recomputes)."""
        request = convert.gather_to_proto(self.job_id, plan, 600.0)
        reply = await self._call(address, "gathering the cache", self._stub(address).GatherCache(request,
                                                                                              timeout=1800.0))
        return reply.fetched_bytes, reply.local_bytes, reply.missing

    async def train_epoch(self, address: str, epoch: int, first_step: int, steps: list[EpochStep],
                          timeout_s: float) -> AsyncIterator[StepReport]:
        """A phase-2 epoch on one member: its report after every step."""
        request = stage_pb2.TrainEpochRequest(job_id=self.job_id, epoch=epoch, first_step=first_step,
                                              steps=convert.steps_to_proto(steps))
        call = self._stub(address).TrainEpoch(request, timeout=timeout_s)
        try:
            async for r in call:
                yield convert.report_from_proto(r)
        except grpc.aio.AioRpcError as error:
            raise TrainingFailed(f"phase 2 epoch {epoch + 1} on {address} failed ({error.code().name}): "
                                 f"{error.details()}") from None
        finally:
            call.cancel()  # closed before its end (the job stopped): the member stops too

    async def renew(self, address: str, lease_s: float) -> None:
        request = stage_pb2.RenewRequest(job_id=self.job_id, lease_s=lease_s)
        await self._call(address, "renewing the job", self._stub(address).Renew(request, timeout=max(1.0, lease_s / 4)))

    async def release(self, address: str, keep_cache: bool, job_id: str | None = None) -> None:
        """Let the job go (`job_id`: another run's of the same job, a stopped one a device still holds)."""
        request = stage_pb2.ReleaseRequest(job_id=job_id or self.job_id, keep_cache=keep_cache)
        await self._call(address, "releasing the job", self._stub(address).Release(request, timeout=30.0))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


async def fetch_records(channel: grpc.aio.Channel, address: str, job_id: str, stage: int, keys: list[str],
                        timeout_s: float, evaluation: bool = False) -> dict[str, tuple[bytes, list]]:
    """Records of stage `stage`'s cache shard (`evaluation`: its evaluation shard) on the device at
    `address`: key -> (bytes, shapes); stage WHOLE (-1): the whole records of its phase-2 cache, those it
    lacks left out."""
    whole = stage < 0
    what = "whole cache records" if whole else f"{'evaluation' if evaluation else 'cache'} records of stage {stage}"
    request = stage_pb2.FetchCacheRequest(job_id=job_id, stage=max(stage, 0), sample_keys=keys, whole=whole,
                                          evaluation=evaluation)
    try:
        records = await read_chunked(stage_pb2_grpc.StageStub(channel).FetchCache(request, timeout=timeout_s),
                                     "header", "data")
    except grpc.aio.AioRpcError as error:
        raise JobError(f"fetching {len(keys)} {what} from {address} failed "
                       f"({error.code().name}): {error.details()}") from None
    except ChunkError as error:
        raise JobError(f"{what} from {address}: {error}") from None
    out = {}
    for header, data in records:
        key, shapes = convert.record_from_header(header)
        out[key] = (data, shapes)
    return out
