"""Stage service: a training job's phase-1 stage replica and phase-2 member on this device.

Thin: it assembles requests, runs the job's work (pac/cluster/host.py) in a worker thread so the event
loop keeps serving TensorStream and Collective, and turns errors into statuses. One job at a time.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import math
import threading
import time
import weakref
from pathlib import Path

import grpc
import torch

from pac.cluster.blobs import blobs
from pac.cluster.host import (
    JobError,
    Phase2Host,
    Phase2Spec,
    StageHost,
    StageSpec,
    join_records,
    pack,
    unpack,
)
from pac.errors import PacError
from pac.net.node import PeerNode, SyncPeer, node_for
from pac.net.tensor_inbox import TensorNotReceived
from pac.pipeline.stage import clip_coefficient
from pac.v1 import stage_pb2, stage_pb2_grpc
from pacd.rpc import InvalidRequest, NotReady, handler

log = logging.getLogger(__name__)

SERVICE_NAME = "pac.v1.Stage"
POLL_S = 0.5


async def read_blobs(request_iterator) -> tuple[dict, bytes]:
    meta, parts = None, []
    async for blob in request_iterator:
        if meta is None:
            if not blob.json:
                raise InvalidRequest("the first Blob must carry the JSON spec")
            try:
                meta = json.loads(blob.json)
            except json.JSONDecodeError as error:
                raise InvalidRequest(f"the first Blob's JSON is malformed: {error}") from None
        parts.append(blob.data)
    if meta is None:
        raise InvalidRequest("empty request stream: expected a Blob with the JSON spec")
    return meta, b"".join(parts)


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeerTransport:
    """host.Transport over the daemon's PeerNode, for code running in a worker thread."""

    def __init__(self, node: PeerNode, loop: asyncio.AbstractEventLoop, job_id: str) -> None:
        self.peer, self.job_id = SyncPeer(node, loop), job_id
        self.aborted = threading.Event()
        self._pending: list = []
        self.send_timeout_s = 120.0

    def send(self, target, tensor, *, stream, step, micro, kind, codec) -> None:
        """Start delivering; `flush()` waits for every delivery (sends overlap with the next compute)."""
        if self.aborted.is_set():
            raise JobError(f"job {self.job_id} was stopped")
        self._pending.append(asyncio.run_coroutine_threadsafe(self.peer.node.send_tensor(
            target, tensor, job_id=stream, step=step, micro_batch=micro, kind=kind, codec=codec,
            timeout_s=self.send_timeout_s), self.peer.loop))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        errors = []
        for future in pending:
            try:
                future.result()
            except Exception as error:  # the first one is reported; the rest are waited for
                errors.append(error)
        if errors:
            raise JobError(f"job {self.job_id}: {errors[0]}")

    def receive(self, stream, step, micro, kind, timeout_s) -> torch.Tensor:
        deadline = time.monotonic() + timeout_s
        while True:  # in slices, so that stopping the job is not held up by a wait
            if self.aborted.is_set():
                raise JobError(f"job {self.job_id} was stopped")
            left = deadline - time.monotonic()
            try:
                return self.peer.receive_tensor(stream, step, micro, kind, min(POLL_S, max(left, 0.01)))
            except TensorNotReceived:
                if left <= POLL_S:
                    raise JobError(f"job {self.job_id}: tensor {kind} of step {step} micro-batch {micro} "
                                   f"({stream}) did not arrive within {timeout_s:g} s; is the device that "
                                   f"sends it still running?") from None

    def allreduce_(self, tensors, group, op_id) -> None:
        if self.aborted.is_set():
            raise JobError(f"job {self.job_id} was stopped")
        self.peer.allreduce_(tensors, group, op_id)


class TrainingState:
    """The job this device holds: its phase-1 stage, its cache shard and its phase-2 member."""

    def __init__(self, job_id: str, cache_root: Path, transport: PeerTransport) -> None:
        self.job_id, self.cache_root, self.transport = job_id, cache_root, transport
        self.stage: StageHost | None = None
        self.phase2: Phase2Host | None = None
        self.lock = asyncio.Lock()  # one request of the job at a time
        self.step = 0
        # The controller's lease (pacctl train renews it): None until the first Renew, then the job is
        # released by itself once `expires` (time.monotonic()) passes with no request of it in flight.
        self.lease_s: float | None = None
        self.expires = math.inf

    def touch(self) -> None:
        """A request of the job arrived: whoever sent it is alive, hold the job a lease longer."""
        if self.lease_s is not None:
            self.expires = max(self.expires, time.monotonic() + self.lease_s)

    def describe(self) -> dict:
        out: dict = {"step": self.step}
        if self.stage is not None:
            out.update(stage=self.stage.spec.stage, replica=self.stage.spec.replica,
                       layers=[self.stage.spec.first, self.stage.spec.end],
                       shard_records=len(self.stage.shard) if self.stage.shard is not None else 0)
        if self.phase2 is not None:
            out.update(rank=self.phase2.spec.rank, cache_records=len(self.phase2.cache))
        return out

    def close(self, keep_cache: bool) -> None:
        self.transport.aborted.set()
        for cache in ([self.stage.shard] if self.stage is not None and self.stage.shard is not None else []) + \
                ([self.phase2.cache] if self.phase2 is not None else []):
            cache.keep = cache.keep or keep_cache
            cache.close()
        self.stage = self.phase2 = None
        _trim_heap()


class StageServicer(stage_pb2_grpc.StageServicer):
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.node = node_for(daemon)

    # ---- the job ---------------------------------------------------------------------------------
    @property
    def job(self) -> TrainingState | None:
        return _JOBS.get(self.daemon)

    def _job(self, job_id: str) -> TrainingState:
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

    def _open(self, job_id: str, directory: str | None) -> TrainingState:
        job = self.job
        if job is not None and job.job_id != job_id:
            raise NotReady(f"this device is running job {job.job_id!r}; stop it first (pacctl train stops its "
                           f"job on Ctrl-C)")
        if job is None:
            transport = PeerTransport(self.node, asyncio.get_running_loop(), job_id)
            job = _JOBS[self.daemon] = TrainingState(job_id, self._cache_root(directory), transport)
        job.touch()
        return job

    # ---- phase 1 ---------------------------------------------------------------------------------
    @handler
    async def Load(self, request_iterator, context):
        meta, data = await read_blobs(request_iterator)
        spec = StageSpec.from_json(json.dumps(meta.get("spec", {})))
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

    def _stage(self, job_id: str) -> tuple[TrainingState, StageHost]:
        job = self._job(job_id)
        if job.stage is None or job.stage.worker is None:
            raise NotReady(f"job {job_id}: this device holds no phase-1 stage")
        return job, job.stage

    @handler
    async def RunStep(self, request, context):
        from pac.cluster.host import MicroIn

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
        out, current, parts = {}, None, []
        try:
            async for blob in stub.FetchCache(stage_pb2.FetchCacheRequest(job_id=self.job.job_id, stage=stage,
                                                                          sample_keys=keys), timeout=timeout_s):
                if blob.json:
                    if current is not None:
                        out[current["key"]] = (b"".join(parts), current["shapes"])
                    current, parts = json.loads(blob.json), []
                parts.append(blob.data)
        except grpc.aio.AioRpcError as error:
            raise JobError(f"fetching {len(keys)} cache records of stage {stage} from {address} failed "
                           f"({error.code().name}): {error.details()}") from None
        if current is not None:
            out[current["key"]] = (b"".join(parts), current["shapes"])
        return out

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
        stages = int(plan["stages"])
        fetches: dict[tuple[str, int], list[str]] = {}
        for sample in wanted:
            for stage, source in enumerate(sample["sources"]):
                if not (stage == local_stage and source == plan["self"]):
                    fetches.setdefault((source, stage), []).append(sample["key"])
        results = await asyncio.gather(*(self._fetch(address, stage, keys, request.timeout_s or 600.0)
                                         for (address, stage), keys in fetches.items()))
        fetched = {(address, stage): result for ((address, stage), _), result in zip(fetches.items(), results,
                                                                                       strict=True)}
        fetched_bytes = sum(len(r[0]) for result in results for r in result.values())

        def assemble() -> int:
            local = 0
            for sample in wanted:
                pieces = []
                for stage in range(stages):
                    source = sample["sources"][stage]
                    if stage == local_stage and source == plan["self"]:
                        piece = job.stage.shard.get_raw(sample["key"])
                        local += len(piece[0])
                    else:
                        piece = fetched[(source, stage)][sample["key"]]
                    pieces.append(piece)
                record, shapes = join_records(pieces)
                phase2.cache.put_raw(sample["key"], record, shapes)
            phase2.cache.flush()
            return local

        async with job.lock:
            local_bytes = await asyncio.to_thread(assemble)
        return stage_pb2.GatherCacheReply(records=len(phase2.cache), fetched_bytes=fetched_bytes,
                                          local_bytes=local_bytes, seconds=time.perf_counter() - started)

    # ---- phase 2 ---------------------------------------------------------------------------------
    @handler
    async def LoadPhase2(self, request_iterator, context):
        meta, data = await read_blobs(request_iterator)
        spec = Phase2Spec.from_json(json.dumps(meta.get("spec", {})))
        job = self._open(spec.job_id, meta.get("cache_directory"))
        async with job.lock:
            if job.stage is not None:
                job.stage.release_model()  # phase 1 is over: the backbone slice goes, the shard stays
            _trim_heap()
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

    async def _release(self, job: TrainingState, keep_cache: bool) -> None:
        async with job.lock:
            if self.job is job:
                await asyncio.to_thread(job.close, keep_cache)
                _JOBS.pop(self.daemon, None)

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

    async def _expire(self, job: TrainingState) -> None:
        """Release `job` once its lease runs out while no request of it is in flight."""
        while self.job is job:
            await asyncio.sleep(min(1.0, job.lease_s / 4))
            if self.job is not job or job.lock.locked() or time.monotonic() <= job.expires:
                continue
            async with job.lock:
                if self.job is not job or time.monotonic() <= job.expires:
                    continue
                log.warning("job %s: no word from its controller for %.0f s (its lease); releasing it",
                            job.job_id, job.lease_s)
                job.transport.aborted.set()
                await asyncio.to_thread(job.close, False)  # a cache the job keeps stays (cache.keep)
                _JOBS.pop(self.daemon, None)
            return

    @handler
    async def Status(self, request, context):
        job = self.job
        if job is None:
            return stage_pb2.StageStatusReply()
        phase = "phase2" if job.phase2 is not None else "phase1"
        return stage_pb2.StageStatusReply(job_id=job.job_id, phase=phase, json=json.dumps(job.describe()))


_JOBS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def release_all(daemon) -> None:
    job = _JOBS.pop(daemon, None)
    if job is not None:
        job.close(keep_cache=False)


def register(server: grpc.aio.Server, daemon) -> list[str]:
    stage_pb2_grpc.add_StageServicer_to_server(StageServicer(daemon), server)
    on_shutdown = getattr(daemon, "on_shutdown", None)
    if on_shutdown is not None and not getattr(daemon, "_stage_hook", False):
        daemon._stage_hook = True

        async def hook() -> None:
            release_all(daemon)

        on_shutdown(hook)
    return [SERVICE_NAME]


