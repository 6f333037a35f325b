"""The one job a device holds (`JobSlot`), kept apart from the job's code: an idle daemon holds a slot, and
PyTorch with the training code is imported by the first job that opens it (pac/worker/device_job.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pac.worker.errors import JobStateError

if TYPE_CHECKING:
    from pac.worker.device_job import DeviceJob
    from pac.worker.stage import Transport

log = logging.getLogger(__name__)


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
            from pac.worker.device_job import DeviceJob

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
