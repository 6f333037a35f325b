"""The job this device holds: its phase-1 stage, its cache shard, its phase-2 member and its lease.

One job per device at a time (`pac.worker.slot.JobSlot`). Requests of the job run one after another (`DeviceJob.lock`),
their compute in a worker thread so the daemon's event loop keeps serving the tensors and AllReduce
frames the compute waits for. The controller's lease (`pacctl train` renews it) lets a device release a
job whose controller went away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import torch

from pac.pipeline.stage import clip_coefficient
from pac.worker.errors import JobStateError
from pac.worker.heap import trim_heap
from pac.worker.phase2 import WHOLE, Phase2Member, assemble_records, fetches_for, whole_fetches
from pac.worker.spec import EpochStep, GatherPlan, MicroIn, Phase2Spec, StageSpec, StepReport
from pac.worker.stage import StageReplica, Transport

log = logging.getLogger(__name__)

# (address, stage, keys) -> {key: (record bytes, shapes)}: another device's shard records (stage WHOLE: the
# whole records its phase-2 cache holds, the ones it lacks left out)
Fetch = Callable[[str, int, list[str]], Awaitable[dict[str, tuple[bytes, list]]]]


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
                       max_grad_norm: float, apply_before: float | None = None) -> tuple[float, float, list[dict]]:
        """One mini-batch on the stage replica; a one-stage job (`apply`) also steps the optimiser after it,
        and with `apply_before` (the previous step's clip coefficient) the previous step's is taken first."""
        stage = self.loaded_stage()
        async with self.lock:
            if apply_before is not None:
                await asyncio.to_thread(stage.apply, apply_before)
            self.step = step
            loss, norm, events = await asyncio.to_thread(stage.run_step, step, loss_total, micro)
            if apply:
                await asyncio.to_thread(stage.apply, clip_coefficient([norm], max_grad_norm))
        return loss, norm, events

    def run_ahead(self, step: int, micro: list[MicroIn]) -> None:
        """Queue `step`'s frozen forwards on the stage replica (it runs them in a thread of its own, beside
        the request holding the job now)."""
        self.loaded_stage().run_ahead(step, micro)

    async def evaluate_step(self, step: int, micro: list[MicroIn]) -> list[dict]:
        """Evaluation micro-batches through the stage replica (StageReplica.evaluate_step)."""
        stage = self.loaded_stage()
        async with self.lock:
            return await asyncio.to_thread(stage.evaluate_step, step, micro)

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
            kept = None
            if self.stage is not None:
                kept = self.stage.tuned_top(spec.top) if spec.top.count and not spec.holds_only else None
                self.stage.release_model()  # phase 1 is over: the backbone slice goes, the shard stays
            trim_heap()
            self.phase2 = await asyncio.to_thread(Phase2Member, spec, tensors, self.cache_root, self.transport, kept)
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
        stage = self.stage
        if stage is not None:
            stage.stop_ahead()
        shards = [] if stage is None else [c for c in (stage.shard, stage.evaluation_shard) if c is not None]
        for cache in shards + ([self.phase2.cache] if self.phase2 is not None else []):
            cache.keep = cache.keep or keep_cache
            cache.close()
        self.stage = self.phase2 = None
        trim_heap()
