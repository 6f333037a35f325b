"""The job this device holds: its phase-1 stage, its cache shard, its phase-2 member and its lease.

One job per device at a time (`JobSlot`). Requests of the job run one after another (`DeviceJob.lock`),
their compute in a worker thread so the daemon's event loop keeps serving the tensors and AllReduce
frames the compute waits for. The controller's lease (`pacctl train` renews it) lets a device release a
job whose controller went away.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import torch

from pac.pipeline.stage import clip_coefficient
from pac.worker.phase2 import WHOLE, Phase2Member, assemble_records, fetches_for, whole_fetches
from pac.worker.spec import EpochStep, GatherPlan, JobError, MicroIn, Phase2Spec, StageSpec, StepReport
from pac.worker.stage import StageReplica, Transport

log = logging.getLogger(__name__)

# (address, stage, keys) -> {key: (record bytes, shapes)}: another device's shard records (stage WHOLE: the
# whole records its phase-2 cache holds, the ones it lacks left out)
Fetch = Callable[[str, int, list[str]], Awaitable[dict[str, tuple[bytes, list]]]]


class JobStateError(JobError):
    """The device does not hold what a request of the job needs (no such job, stage or phase)."""


def trim_heap() -> None:
    """Hand freed memory back to the system (a released job's tensors are large)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


async def iterate_in_thread(make: Callable[[], Iterator], name: str) -> AsyncIterator:
    """The items of `make()`'s iterator, computed in a thread of their own; its error is raised here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def work() -> None:
        try:
            for item in make():
                loop.call_soon_threadsafe(queue.put_nowait, (item, None))
        except BaseException as error:  # handed to the caller below
            loop.call_soon_threadsafe(queue.put_nowait, (None, error))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, (done, None))

    threading.Thread(target=work, name=name, daemon=True).start()
    failure = None
    while (entry := await queue.get())[0] is not done:
        item, error = entry
        if error is not None:
            failure = error
        else:
            yield item
    if failure is not None:
        raise failure


class DeviceJob:
    """The job this device holds: its phase-1 stage, its cache shard and its phase-2 member."""

    def __init__(self, job_id: str, cache_root: Path, transport: Transport) -> None:
        self.job_id, self.cache_root, self.transport = job_id, cache_root, transport
        self.stage: StageReplica | None = None
        self.phase2: Phase2Member | None = None
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

    def lease_expired(self) -> bool:
        """A lease was granted, has run out, and no request of the job is in flight."""
        return not self.lock.locked() and time.monotonic() > self.expires

    # ---- phase 1 ---------------------------------------------------------------------------------
    async def load_stage(self, spec: StageSpec, state: dict[str, torch.Tensor]) -> StageReplica:
        async with self.lock:
            if self.stage is not None:
                self.stage.release_model()
            self.transport.send_timeout_s = spec.timeout_s
            self.stage = await asyncio.to_thread(StageReplica, spec, state, self.cache_root, self.transport)
            return self.stage

    def loaded_stage(self) -> StageReplica:
        if self.stage is None or self.stage.worker is None:
            raise JobStateError(f"job {self.job_id}: this device holds no phase-1 stage")
        return self.stage

    async def run_step(self, step: int, loss_total: int, micro: list[MicroIn], apply: bool,
                       max_grad_norm: float) -> tuple[float, float, list[dict]]:
        """One mini-batch on the stage replica; a one-stage job (`apply`) also steps the optimiser."""
        stage = self.loaded_stage()
        async with self.lock:
            self.step = step
            loss, norm, events = await asyncio.to_thread(stage.run_step, step, loss_total, micro)
            if apply:
                await asyncio.to_thread(stage.apply, clip_coefficient([norm], max_grad_norm))
        return loss, norm, events

    async def apply_step(self, clip: float) -> float:
        stage = self.loaded_stage()
        async with self.lock:
            return await asyncio.to_thread(stage.apply, clip)

    async def state(self, optimizer: bool) -> tuple[dict[str, torch.Tensor], int]:
        """The trained tensors (and the optimiser's) of the phase-2 member, else the stage; its steps."""
        holder = self.phase2 if self.phase2 is not None else self.stage
        if holder is None or (holder is self.stage and self.stage.worker is None):
            raise JobStateError(f"job {self.job_id}: nothing trained on this device")
        async with self.lock:
            return await asyncio.to_thread(holder.state, optimizer)

    # ---- phase 2 ---------------------------------------------------------------------------------
    async def load_phase2(self, spec: Phase2Spec, tensors: dict[str, torch.Tensor]) -> Phase2Member:
        async with self.lock:
            if self.stage is not None:
                self.stage.release_model()  # phase 1 is over: the backbone slice goes, the shard stays
            trim_heap()
            self.phase2 = await asyncio.to_thread(Phase2Member, spec, tensors, self.cache_root, self.transport)
            return self.phase2

    async def gather(self, plan: GatherPlan, fetch: Fetch) -> tuple[int, int, int]:
        """Make the phase-2 cache hold every sample of `plan`: whole records from the devices named for
        them (`whole`: a member before a re-plan, a replica), else the parts in this device's own shard and
        the rest fetched from the devices that cached them (else recomputed when first trained on).
        Returns (bytes fetched, bytes read locally, samples left to recompute)."""
        phase2 = self.phase2
        if phase2 is None:
            raise JobStateError(f"job {self.job_id}: LoadPhase2 must come before GatherCache")
        local_stage = self.stage.spec.stage if self.stage is not None else None
        phase2.add_samples(plan.samples)
        wanted = [s for s in plan.samples if s.key not in phase2.cache]
        wholes = whole_fetches(wanted, plan.me)
        found = await asyncio.gather(*(fetch(address, WHOLE, keys) for address, keys in wholes.items()))
        records = {key: record for result in found for key, record in result.items()}
        fetched_bytes = sum(len(r[0]) for r in records.values())
        wanted = [s for s in wanted if s.key not in records]
        fetches = fetches_for(wanted, local_stage, plan.me)
        results = await asyncio.gather(*(fetch(address, stage, keys) for (address, stage), keys in fetches.items()))
        fetched = dict(zip(fetches, results, strict=True))
        fetched_bytes += sum(len(r[0]) for result in results for r in result.values())
        shard = self.stage.shard if self.stage is not None else None
        async with self.lock:
            local_bytes = await asyncio.to_thread(assemble_records, phase2.cache, wanted, plan.stages, local_stage,
                                                  plan.me, shard, fetched, records)
        return fetched_bytes, local_bytes, sum(1 for s in wanted if not all(s.sources))

    async def train_epoch(self, first_step: int, steps: list[EpochStep]) -> AsyncIterator[StepReport]:
        """One phase-2 epoch, a report after every step."""
        phase2 = self.phase2
        if phase2 is None:
            raise JobStateError(f"this device holds no phase-2 state of job {self.job_id!r}")
        stage = self.stage
        if stage is not None and stage.shard is not None and not stage.shard.keep:
            # Phase 2 has begun, so every member has gathered its records: no one reads this device's
            # phase-1 shard again, and its disk goes back (the planner counted both until now).
            async with self.lock:
                shard, stage.shard = stage.shard, None
                await asyncio.to_thread(shard.close)
        async with self.lock:
            async for report in iterate_in_thread(lambda: phase2.train_epoch(first_step, steps),
                                                  f"phase2-{self.job_id}"):
                self.step = report.step
                yield report

    def close(self, keep_cache: bool) -> None:
        self.transport.aborted.set()
        for cache in ([self.stage.shard] if self.stage is not None and self.stage.shard is not None else []) + \
                ([self.phase2.cache] if self.phase2 is not None else []):
            cache.keep = cache.keep or keep_cache
            cache.close()
        self.stage = self.phase2 = None
        trim_heap()


class JobSlot:
    """The one job a device holds, from its first Load to its release (by the controller or its lease)."""

    def __init__(self, spawn: Callable[[Awaitable, str], object]) -> None:
        self.job: DeviceJob | None = None
        self._spawn = spawn  # starts a task the daemon cancels at shutdown

    def get(self, job_id: str) -> DeviceJob:
        job = self.job
        if job is None or job.job_id != job_id:
            raise JobStateError(f"this device holds no job {job_id!r}" + (f" (it holds {job.job_id!r})" if job else ""))
        job.touch()
        return job

    def holds(self, job_id: str) -> DeviceJob | None:
        job = self.job
        return job if job is not None and job.job_id == job_id else None

    def open(self, job_id: str, cache_root: Callable[[], Path], transport: Callable[[], Transport]) -> DeviceJob:
        job = self.job
        if job is not None and job.job_id != job_id:
            raise JobStateError(f"this device is running job {job.job_id!r}; stop it first (pacctl train stops "
                                f"its job on Ctrl-C)")
        if job is None:
            job = self.job = DeviceJob(job_id, cache_root(), transport())
        job.touch()
        return job

    async def release(self, job_id: str, keep_cache: bool) -> bool:
        job = self.holds(job_id)
        if job is None:
            return False
        job.transport.aborted.set()  # a step waiting on a peer gives up within POLL_S
        async with job.lock:
            if self.job is job:
                await asyncio.to_thread(job.close, keep_cache)
                self.job = None
        log.info("job %s released%s", job_id, " (cache kept)" if keep_cache else "")
        return True

    def renew(self, job_id: str, lease_s: float) -> bool:
        """Hold the job `lease_s` more seconds; False if this device does not hold it."""
        job = self.holds(job_id)
        if job is None:
            return False
        first = job.lease_s is None
        job.lease_s = lease_s
        job.expires = time.monotonic() + lease_s
        if first:
            self._spawn(self._expire(job), f"lease of job {job.job_id}")
        return True

    async def _expire(self, job: DeviceJob) -> None:
        """Release `job` once its lease runs out while no request of it is in flight."""
        while self.job is job:
            await asyncio.sleep(min(1.0, job.lease_s / 4))
            if self.job is not job or not job.lease_expired():
                continue
            async with job.lock:
                if self.job is not job or time.monotonic() <= job.expires:
                    continue
                log.warning("job %s: no word from its controller for %.0f s (its lease); releasing it and "
                            "keeping its activation cache for `pacctl train --resume`", job.job_id, job.lease_s)
                job.transport.aborted.set()
                await asyncio.to_thread(job.close, True)  # the controller died: its job may be resumed
                self.job = None
            return

    def shutdown(self) -> None:
        """The daemon stops: release the job (its cache goes unless the job keeps it)."""
        job, self.job = self.job, None
        if job is not None:
            job.close(keep_cache=False)
