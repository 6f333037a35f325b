"""Stage service: a training job's phase-1 stage replica and phase-2 member on this device.

Thin: it converts requests (pac/net/convert/stage.py), delegates to the job this device holds
(pac.worker.device_job: the work runs in worker threads, one request of the job at a time) and turns errors
into statuses. One job at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc

from pac.errors import PacError
from pac.net.chunks import ChunkError, chunked, read_one
from pac.net.convert import stage as convert
from pac.net.node import node_for
from pac.net.peer_transport import PeerTransport
from pac.net.stage_client import fetch_records
from pac.v1 import stage_pb2, stage_pb2_grpc
from pac.worker.device_job import DeviceJob
from pac.worker.slot import JobSlot
from pac.worker.tensors import pack, unpack
from pacd.rpc import InvalidRequest, handler

log = logging.getLogger(__name__)



async def read_load(request_iterator) -> tuple:
    """A Load request's spec (first chunk) and its tensors."""
    try:
        spec, data = await read_one(request_iterator, "spec", "tensors")
    except ChunkError as error:
        raise InvalidRequest(str(error)) from None
    return spec, unpack(data)


class StageServicer(stage_pb2_grpc.StageServicer):
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.node = node_for(daemon)
        self.slot: JobSlot = daemon.jobs  # the one job this device holds

    def _open(self, job_id: str, directory: str | None) -> DeviceJob:
        def cache_root() -> Path:
            root = (Path(directory) if directory else self.daemon.state.root / "cache") / self.daemon.node_id
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            return root

        loop = asyncio.get_running_loop()
        return self.slot.open(job_id, cache_root, lambda: PeerTransport(self.node, loop, job_id))

    # ---- phase 1 ---------------------------------------------------------------------------------
    @handler
    async def Load(self, request_iterator, context):
        message, state = await read_load(request_iterator)
        spec = convert.stage_spec_from_proto(message)
        job = self._open(spec.job_id, spec.cache_directory)
        stage = await job.load_stage(spec, state)
        log.info("job %s: stage %d replica %d, layers [%d, %d), loaded in %.1f s", spec.job_id, spec.stage,
                 spec.replica, spec.first, spec.end, stage.load_s)
        return stage_pb2.LoadReply(held_bytes=stage.held_bytes(), load_s=stage.load_s,
                                   cached_records=len(stage.shard) if stage.shard is not None else 0,
                                   fingerprint=stage.fingerprint)

    @handler
    async def RunStep(self, request, context):
        job = self.slot.get(request.job_id)
        stacks = len(job.loaded_stage().side_spec.stack_sizes)
        micro = [convert.micro_from_proto(m, stacks) for m in request.micro_batches]
        if request.ahead:
            job.run_ahead(request.step, micro)
            return stage_pb2.RunStepReply()
        if request.evaluate:
            events = await job.evaluate_step(request.step, micro)
            return stage_pb2.RunStepReply(events=convert.events_to_proto(events),
                                          cache_records=job.stage.records_written)
        loss, norm, events = await job.run_step(request.step, request.loss_total, micro, request.apply,
                                                request.max_grad_norm, request.apply_before
                                                if request.HasField("apply_before") else None)
        return stage_pb2.RunStepReply(loss=loss, grad_square_norm=norm, events=convert.events_to_proto(events),
                                      cache_records=job.stage.records_written)

    @handler
    async def ApplyStep(self, request, context):
        lr = await self.slot.get(request.job_id).apply_step(request.clip_coefficient)
        return stage_pb2.ApplyStepReply(learning_rate=lr)

    async def GetState(self, request, context):
        try:
            tensors, steps_done = await self.slot.get(request.job_id).state(request.optimizer)
            data = await asyncio.to_thread(pack, tensors)
        except PacError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        for chunk in chunked(stage_pb2.StateChunk, "info", stage_pb2.StateInfo(steps_done=steps_done),
                             "tensors", data):
            yield chunk

    # ---- the cache between the phases ------------------------------------------------------------
    async def FetchCache(self, request, context):
        job = self.slot.holds(request.job_id)
        if request.whole:
            async for chunk in self._whole_records(job, request, context):
                yield chunk
            return
        what = "evaluation shard" if request.evaluation else "cache shard"
        shard = None if job is None or job.stage is None else \
            job.stage.evaluation_shard if request.evaluation else job.stage.shard
        if shard is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this device holds no {what} of job {request.job_id!r}")
        if job.stage.spec.stage != request.stage:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"this device holds the shard of stage "
                                f"{job.stage.spec.stage}, not {request.stage}")
        for key in request.sample_keys:
            if key not in shard:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"cache record {key[:12]} is not in the {what} "
                                    f"of stage {request.stage} on this device")
            try:
                record, shapes = await asyncio.to_thread(shard.get_raw, key)
            except PacError as error:  # a corrupt record: the requester reports it
                await context.abort(grpc.StatusCode.DATA_LOSS, str(error))
            header = convert.record_header(key, shapes)
            for chunk in chunked(stage_pb2.CacheRecordChunk, "header", header, "data", record):
                yield chunk

    async def _whole_records(self, job, request, context):
        """Whole records from this member's phase-2 cache (a re-planned member's, or a replica); the ones
        it does not hold, or holds damaged, are left out: the requester fetches or recomputes them."""
        if job is None or job.phase2 is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this device holds no phase-2 cache of job {request.job_id!r}")
        cache = job.phase2.cache
        for key in request.sample_keys:
            async with job.lock:  # the member may be writing its own records meanwhile
                if key not in cache:
                    continue
                try:
                    record, shapes = await asyncio.to_thread(cache.get_raw, key)
                except PacError as error:
                    log.warning("job %s: not sending cache record %s: %s", request.job_id, key[:12], error)
                    continue
            header = convert.record_header(key, shapes)
            for chunk in chunked(stage_pb2.CacheRecordChunk, "header", header, "data", record):
                yield chunk

    @handler
    async def GatherCache(self, request, context):
        job = self.slot.get(request.job_id)
        plan = convert.gather_from_proto(request)
        started = time.perf_counter()
        timeout_s = request.timeout_s or 600.0

        async def fetch(address: str, stage: int, keys: list[str]) -> dict[str, tuple]:
            return await fetch_records(self.node.channels.get(address), address, job.job_id, stage, keys, timeout_s)

        fetched_bytes, local_bytes, missing = await job.gather(plan, fetch)
        return stage_pb2.GatherCacheReply(records=len(job.phase2.cache), fetched_bytes=fetched_bytes,
                                          local_bytes=local_bytes, seconds=time.perf_counter() - started,
                                          missing=missing)

    # ---- phase 2 ---------------------------------------------------------------------------------
    @handler
    async def LoadPhase2(self, request_iterator, context):
        message, tensors = await read_load(request_iterator)
        spec = convert.phase2_spec_from_proto(message)
        job = self._open(spec.job_id, spec.cache_directory)
        started = time.perf_counter()
        phase2 = await job.load_phase2(spec, tensors)
        held = sum(t.numel() * t.element_size() for t in phase2.model.state_dict().values()) if phase2.model else 0
        return stage_pb2.LoadReply(held_bytes=held, load_s=time.perf_counter() - started,
                                   cached_records=len(phase2.cache), fingerprint=spec.fingerprint)

    async def TrainEpoch(self, request, context):
        job = self.slot.holds(request.job_id)
        if job is None or job.phase2 is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this device holds no phase-2 state of job {request.job_id!r}")
        try:
            async for report in job.train_epoch(request.first_step, convert.steps_from_proto(request.steps)):
                yield convert.report_to_proto(report)
        except PacError as error:
            await context.abort(grpc.StatusCode.ABORTED, f"phase 2, epoch {request.epoch}: {error}")
        except Exception as error:  # a bug: logged, and the daemon keeps serving
            log.error("phase 2 of job %s failed", request.job_id, exc_info=error)
            await context.abort(grpc.StatusCode.INTERNAL, f"phase 2, epoch {request.epoch}: {error}")
