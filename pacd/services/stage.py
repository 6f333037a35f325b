"""Stage service: a training job's phase-1 stage replica and phase-2 member on this device.

Thin: it assembles requests, runs the job's work (pac/worker) in a worker thread so the event loop keeps
serving TensorStream and Collective, and turns errors into statuses. One job at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import grpc

from pac.errors import PacError
from pac.net.blobs import BlobError, blobs, read_blobs, read_records
from pac.net.node import node_for
from pac.net.peer_transport import PeerTransport
from pac.pipeline.stage import clip_coefficient
from pac.v1 import stage_pb2, stage_pb2_grpc
from pac.worker.job import DeviceJob, trim_heap
from pac.worker.phase2 import Phase2Host, assemble_records, fetches_for
from pac.worker.spec import JobError, MicroIn, Phase2Spec, StageSpec, spec_from
from pac.worker.stage import StageHost
from pac.worker.tensors import pack, unpack
from pacd.rpc import InvalidRequest, NotReady, handler

log = logging.getLogger(__name__)

SERVICE_NAME = "pac.v1.Stage"


async def read_request(request_iterator) -> tuple[dict, bytes]:
    """A Load request's one record (the spec as JSON, then the tensors)."""
    try:
        return await read_blobs(request_iterator)
    except BlobError as error:
        raise InvalidRequest(str(error)) from None


class StageServicer(stage_pb2_grpc.StageServicer):
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.node = node_for(daemon)
        self.job: DeviceJob | None = None  # the one job this device holds

    # ---- the job ---------------------------------------------------------------------------------
    def _job(self, job_id: str) -> DeviceJob:
        job = self.job
        if job is None or job.job_id != job_id:
            raise NotReady(f"this device holds no job {job_id!r}" + (f" (it holds {job.job_id!r})" if job else ""))
        job.touch()
        return job

    def _cache_root(self, directory: str | None) -> Path:
        root = Path(directory) if directory else self.daemon.state.root / "cache"
        root = root / self.daemon.node_id
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return root

    def _open(self, job_id: str, directory: str | None) -> DeviceJob:
        job = self.job
        if job is not None and job.job_id != job_id:
            raise NotReady(f"this device is running job {job.job_id!r}; stop it first (pacctl train stops its "
                           f"job on Ctrl-C)")
        if job is None:
            transport = PeerTransport(self.node, asyncio.get_running_loop(), job_id)
            job = self.job = DeviceJob(job_id, self._cache_root(directory), transport)
        job.touch()
        return job

    # ---- phase 1 ---------------------------------------------------------------------------------
    @handler
    async def Load(self, request_iterator, context):
        meta, data = await read_request(request_iterator)
        spec = spec_from(StageSpec, meta.get("spec", {}))
        job = self._open(spec.job_id, meta.get("cache_directory"))
        async with job.lock:
            if job.stage is not None:
                job.stage.release_model()
            state = unpack(data)
            job.transport.send_timeout_s = spec.timeout_s
            job.stage = await asyncio.to_thread(StageHost, spec, state, job.cache_root, job.transport)
            log.info("job %s: stage %d replica %d, layers [%d, %d), loaded in %.1f s", spec.job_id, spec.stage,
                     spec.replica, spec.first, spec.end, job.stage.load_s)
            shard = job.stage.shard
            return stage_pb2.LoadReply(held_bytes=job.stage.held_bytes(), load_s=job.stage.load_s,
                                       cached_records=len(shard) if shard is not None else 0,
                                       fingerprint=job.stage.fingerprint)

    def _stage(self, job_id: str) -> tuple[DeviceJob, StageHost]:
        job = self._job(job_id)
        if job.stage is None or job.stage.worker is None:
            raise NotReady(f"job {job_id}: this device holds no phase-1 stage")
        return job, job.stage

    @handler
    async def RunStep(self, request, context):
        job, stage = self._stage(request.job_id)
        micro = []
        for m in request.micro_batches:
            tensors = unpack(m.tensors) if m.tensors else None
            stacks = len(stage.side_spec.stack_sizes)
            lengths = [list(m.lengths[i:i + stacks]) for i in range(0, len(m.lengths), stacks)]
            micro.append(MicroIn(m.index, m.rows, tensors, list(m.sample_keys), lengths))
        async with job.lock:
            job.step = request.step
            loss, norm, events = await asyncio.to_thread(stage.run_step, request.step, request.loss_total, micro)
            if request.apply:
                await asyncio.to_thread(stage.apply, clip_coefficient([norm], request.max_grad_norm))
        return stage_pb2.RunStepReply(loss=loss, grad_square_norm=norm, events_json=json.dumps(events),
                                      cache_records=stage.records_written)

    @handler
    async def ApplyStep(self, request, context):
        job, stage = self._stage(request.job_id)
        async with job.lock:
            lr = await asyncio.to_thread(stage.apply, request.clip_coefficient)
        return stage_pb2.ApplyStepReply(learning_rate=lr)

    async def GetState(self, request, context):
        try:
            job = self._job(request.job_id)
            holder = job.phase2 if job.phase2 is not None else job.stage
            if holder is None or (holder is job.stage and job.stage.worker is None):
                raise NotReady(f"job {request.job_id}: nothing trained on this device")
            async with job.lock:
                tensors, meta = await asyncio.to_thread(holder.state, request.optimizer)
                data = await asyncio.to_thread(pack, tensors)
        except PacError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        for blob in blobs(data, meta):
            yield blob

    # ---- the cache between the phases ------------------------------------------------------------
    async def FetchCache(self, request, context):
        job = self.job
        if job is None or job.job_id != request.job_id or job.stage is None or job.stage.shard is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this device holds no cache shard of job {request.job_id!r}")
        if job.stage.spec.stage != request.stage:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"this device holds the shard of stage "
                                f"{job.stage.spec.stage}, not {request.stage}")
        shard = job.stage.shard
        for key in request.sample_keys:
            if key not in shard:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"cache record {key[:12]} is not in the shard of "
                                    f"stage {request.stage} on this device")
            try:
                record, shapes = await asyncio.to_thread(shard.get_raw, key)
            except PacError as error:  # a corrupt record: the requester reports it
                await context.abort(grpc.StatusCode.DATA_LOSS, str(error))
            for blob in blobs(record, {"key": key, "shapes": shapes}):
                yield blob

    async def _fetch(self, address: str, stage: int, keys: list[str], timeout_s: float) -> dict[str, tuple]:
        stub = stage_pb2_grpc.StageStub(self.node.channels.get(address))
        try:
            records = await read_records(stub.FetchCache(stage_pb2.FetchCacheRequest(
                job_id=self.job.job_id, stage=stage, sample_keys=keys), timeout=timeout_s))
        except grpc.aio.AioRpcError as error:
            raise JobError(f"fetching {len(keys)} cache records of stage {stage} from {address} failed "
                           f"({error.code().name}): {error.details()}") from None
        except BlobError as error:
            raise JobError(f"cache records of stage {stage} from {address}: {error}") from None
        return {meta["key"]: (data, meta["shapes"]) for meta, data in records}

    @handler
    async def GatherCache(self, request, context):
        job = self._job(request.job_id)
        if job.phase2 is None:
            raise NotReady(f"job {request.job_id}: LoadPhase2 must come before GatherCache")
        plan = json.loads(request.plan_json)
        started = time.perf_counter()
        phase2, local_stage = job.phase2, job.stage.spec.stage if job.stage is not None else None
        samples = plan["samples"]
        phase2.add_samples(samples)
        wanted = [s for s in samples if s["key"] not in phase2.cache]
        fetches = fetches_for(wanted, local_stage, plan["self"])
        results = await asyncio.gather(*(self._fetch(address, stage, keys, request.timeout_s or 600.0)
                                         for (address, stage), keys in fetches.items()))
        fetched = dict(zip(fetches, results, strict=True))
        fetched_bytes = sum(len(r[0]) for result in results for r in result.values())
        shard = job.stage.shard if job.stage is not None else None
        async with job.lock:
            local_bytes = await asyncio.to_thread(assemble_records, phase2.cache, wanted, int(plan["stages"]),
                                                  local_stage, plan["self"], shard, fetched)
        return stage_pb2.GatherCacheReply(records=len(phase2.cache), fetched_bytes=fetched_bytes,
                                          local_bytes=local_bytes, seconds=time.perf_counter() - started)

    # ---- phase 2 ---------------------------------------------------------------------------------
    @handler
    async def LoadPhase2(self, request_iterator, context):
        meta, data = await read_request(request_iterator)
        spec = spec_from(Phase2Spec, meta.get("spec", {}))
        job = self._open(spec.job_id, meta.get("cache_directory"))
        async with job.lock:
            if job.stage is not None:
                job.stage.release_model()  # phase 1 is over: the backbone slice goes, the shard stays
            trim_heap()
            started = time.perf_counter()
            job.phase2 = await asyncio.to_thread(Phase2Host, spec, unpack(data), job.cache_root, job.transport)
            held = sum(t.numel() * t.element_size() for t in job.phase2.model.state_dict().values())
            return stage_pb2.LoadReply(held_bytes=held, load_s=time.perf_counter() - started,
                                       cached_records=len(job.phase2.cache), fingerprint=spec.fingerprint)

    async def TrainEpoch(self, request, context):
        job = self.job
        if job is None or job.job_id != request.job_id or job.phase2 is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this device holds no phase-2 state of job {request.job_id!r}")
        steps = json.loads(request.steps_json)
        stage = job.stage
        if stage is not None and stage.shard is not None and not stage.shard.keep:
            # Phase 2 has begun, so every member has gathered its records: no one reads this device's
            # phase-1 shard again, and its disk goes back (the planner counted both until now).
            async with job.lock:
                shard, stage.shard = stage.shard, None
                await asyncio.to_thread(shard.close)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def work() -> None:
            try:
                for report in job.phase2.train_epoch(request.first_step, steps):
                    job.step = report["step"]
                    loop.call_soon_threadsafe(queue.put_nowait, report)
            except BaseException as error:  # handed to the RPC below
                loop.call_soon_threadsafe(queue.put_nowait, error)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        async with job.lock:
            thread = threading.Thread(target=work, name=f"phase2-{request.job_id}", daemon=True)
            thread.start()
            failure = None
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    failure = item
                    continue
                yield stage_pb2.StepReport(step=item["step"], loss=item["loss"], samples=item["samples"],
                                           seconds=item["seconds"], allreduce_s=item["allreduce_s"])
        if failure is not None:
            if not isinstance(failure, PacError):
                log.error("phase 2 of job %s failed", request.job_id, exc_info=failure)
            await context.abort(grpc.StatusCode.ABORTED if isinstance(failure, PacError)
                                else grpc.StatusCode.INTERNAL, f"phase 2, epoch {request.epoch}: {failure}")

    # ---- lifetime --------------------------------------------------------------------------------
    @handler
    async def Release(self, request, context):
        job = self.job
        if job is None or job.job_id != request.job_id:
            return stage_pb2.ReleaseReply(released=False)
        job.transport.aborted.set()  # a step waiting on a peer gives up within POLL_S
        await self._release(job, request.keep_cache)
        log.info("job %s released%s", request.job_id, " (cache kept)" if request.keep_cache else "")
        return stage_pb2.ReleaseReply(released=True)

    async def _release(self, job: DeviceJob, keep_cache: bool) -> None:
        async with job.lock:
            if self.job is job:
                await asyncio.to_thread(job.close, keep_cache)
                self.job = None

    @handler
    async def Renew(self, request, context):
        if not request.lease_s > 0:
            raise InvalidRequest(f"lease_s must be > 0, got {request.lease_s}")
        job = self.job
        if job is None or job.job_id != request.job_id:
            return stage_pb2.RenewReply(held=False)
        first = job.lease_s is None
        job.lease_s = request.lease_s
        job.expires = time.monotonic() + request.lease_s
        if first:
            self.daemon.spawn(self._expire(job), f"lease of job {job.job_id}")  # cancelled at shutdown
        return stage_pb2.RenewReply(held=True)

    async def _expire(self, job: DeviceJob) -> None:
        """Release `job` once its lease runs out while no request of it is in flight."""
        while self.job is job:
            await asyncio.sleep(min(1.0, job.lease_s / 4))
            if self.job is not job or not job.lease_expired():
                continue
            async with job.lock:
                if self.job is not job or time.monotonic() <= job.expires:
                    continue
                log.warning("job %s: no word from its controller for %.0f s (its lease); releasing it",
                            job.job_id, job.lease_s)
                job.transport.aborted.set()
                await asyncio.to_thread(job.close, False)  # a cache the job keeps stays (cache.keep)
                self.job = None
            return

    @handler
    async def Status(self, request, context):
        job = self.job
        if job is None:
            return stage_pb2.StageStatusReply()
        phase = "phase2" if job.phase2 is not None else "phase1"
        return stage_pb2.StageStatusReply(job_id=job.job_id, phase=phase, json=json.dumps(job.describe()))


def release(servicer: StageServicer) -> None:
    """At shutdown: release the job the servicer holds (its cache goes unless the job keeps it)."""
    job, servicer.job = servicer.job, None
    if job is not None:
        job.close(keep_cache=False)


def register(server: grpc.aio.Server, daemon) -> list[str]:
    servicer = StageServicer(daemon)
    stage_pb2_grpc.add_StageServicer_to_server(servicer, server)
    on_shutdown = getattr(daemon, "on_shutdown", None)
    if on_shutdown is not None:
        async def hook() -> None:
            release(servicer)

        on_shutdown(hook)
    return [SERVICE_NAME]
