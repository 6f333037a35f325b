"""What the parts of a running job share: its options, devices, channels, prepared data and record."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pac.cluster.prepare import Prepared
from pac.cluster.record import JobRecord
from pac.net.stage_client import StageClient


@dataclass(frozen=True)
class Device:
    node_id: str
    address: str
    hostname: str = ""
    memory_budget_bytes: int = 0


@dataclass
class RunOptions:
    """How the controller runs a job beyond the job file (benchmarks pick baselines here)."""

    strategy: str = "pac"  # pac | pipeline-only | data-only | single-device (pac.planner.baselines)
    use_cache: bool | None = None  # None: as the job says
    profile_batch_sizes: tuple[int, ...] | None = None  # None: 1, B/4, B (at most 3)
    step_timeout_s: float = 300.0
    lease_s: float = 120.0  # a device releases the job after this long without word from the controller
    codec: str = "none"  # forward activations on the wire
    evaluate: bool = True
    resume: bool = False  # continue the stopped job from its newest checkpoint in the output directory
    deadline_s: float = 6.0  # a device silent this long is lost and the job goes on without it; 0: it fails
    find_devices: Callable[[], Awaitable[list[Device]]] | None = None  # the job's devices, found anew (joins)
    scout_s: float = 30.0  # how often `find_devices` is asked while the job runs


@dataclass
class JobContext:
    job: Any  # pac.jobfile.Job
    job_id: str
    devices: list[Device]
    stages: StageClient
    options: RunOptions
    prepared: Prepared
    record: JobRecord
    loaded: set[str] = field(default_factory=set)  # addresses of the devices holding part of the job
    # after each epoch's checkpoint: (epochs done, steps done, the trained state) -> the evaluation
    on_epoch_end: Callable[[int, int, dict], Awaitable[None]] | None = None

    async def epoch_ended(self, epoch: int, step: int, state: dict) -> None:
        if self.on_epoch_end is not None:
            await self.on_epoch_end(epoch, step, state)

    def address_of(self) -> dict[str, str]:
        return {d.node_id: d.address for d in self.devices}

    def node_of(self) -> dict[str, str]:
        return {d.address: d.node_id for d in self.devices}
