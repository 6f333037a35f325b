"""The job this device holds: its phase-1 stage, its cache shard, its phase-2 member and its lease.

One job per device at a time. Requests of the job run one after another (`lock`); the controller's lease
(`pacctl train` renews it) lets a device release a job whose controller went away.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import math
import time
from pathlib import Path

from pac.worker.phase2 import Phase2Host
from pac.worker.stage import StageHost, Transport


def trim_heap() -> None:
    """Hand freed memory back to the system (a released job's tensors are large)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class DeviceJob:
    """The job this device holds: its phase-1 stage, its cache shard and its phase-2 member."""

    def __init__(self, job_id: str, cache_root: Path, transport: Transport) -> None:
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
        trim_heap()

    def lease_expired(self) -> bool:
        """A lease was granted, has run out, and no request of the job is in flight."""
        return not self.lock.locked() and time.monotonic() > self.expires
