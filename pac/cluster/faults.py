"""Devices that leave during a job: noticing it, and what the job keeps to go on without them.

`watch` asks every device holding part of the job whether it is there (Stage.Status) every quarter of the
deadline; one that does not answer within the deadline, or whose connection is refused, is lost. A step
that fails is checked the same way (`lost_among`): if every device answers, the failure is the job's own
and the job fails as before; if one does not, the controller goes on without it
(pac.cluster.controller): in phase 2 from the survivors' state (every member holds the whole side
network after each step, so at most the step in flight is redone: Horovod elastic's `State.commit`
without a copy), in phase 1 from the last commit (the last checkpoint), on a new plan over the devices
that remain. docs/cluster.md, "Devices that leave".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pac.cluster.context import Device
from pac.errors import PacError
from pac.net.stage_client import StageClient


class DeviceLost(PacError):
    def __init__(self, device: Device, why: str) -> None:
        self.device, self.why = device, why
        self.noticed = time.perf_counter()
        super().__init__(f"device {device.node_id} ({device.address}) is lost: {why}")


class DevicesBack(PacError):
    """Lost devices that answer again (`devices`) and devices new to the job (`joined`)."""

    def __init__(self, devices: list[Device], joined: list[Device] | None = None) -> None:
        self.devices, self.joined = devices, list(joined or [])
        super().__init__("back: " + ", ".join(f"{d.node_id} ({d.address})" for d in devices + self.joined))


@dataclass
class Fault:
    """One lost device, as metrics.json and status.json list it."""

    device: str
    address: str
    why: str
    phase: int
    step: int  # steps done when it was noticed
    noticed_unix: float
    steps_redone: int = 0
    resumed_from_step: int = 0
    recovered_s: float | None = None  # from the notice to the first step taken without the device
    replanned: str = ""  # the new plan, in a line

    def to_dict(self) -> dict:
        return asdict(self)


async def lost_among(stages: StageClient, devices: list[Device], deadline_s: float) -> DeviceLost | None:
    """The first of `devices` that does not answer within `deadline_s` (asked twice, half a second
    apart, so a connection reset once does not count), or None."""
    async def one(device: Device) -> DeviceLost | None:
        why = await stages.ping(device.address, deadline_s)
        if why is not None and not why.startswith("no answer"):
            await asyncio.sleep(0.5)
            why = await stages.ping(device.address, deadline_s)
        return DeviceLost(device, why) if why is not None else None

    found = await asyncio.gather(*(one(d) for d in devices))
    return next((lost for lost in found if lost is not None), None)


async def watch(stages: StageClient, holding: Callable[[], list[Device]], deadline_s: float) -> DeviceLost:
    """Returns when one of the devices holding the job (asked anew each round) is lost."""
    while True:
        await asyncio.sleep(deadline_s / 4)
        lost = await lost_among(stages, holding(), deadline_s)
        if lost is not None:
            return lost


async def answering(stages: StageClient, devices: list[Device], timeout_s: float) -> list[Device]:
    """Those of `devices` that answer within `timeout_s`."""
    found = await asyncio.gather(*(stages.ping(d.address, timeout_s) for d in devices))
    return [d for d, why in zip(devices, found, strict=True) if why is None]


def restricted(document: dict, nodes: set[str]) -> dict:
    """A home's profile document with only the devices `nodes` (and the links between them)."""
    return {**document, "devices": [d for d in document["devices"] if d.get("name") in nodes],
            "links": [link for link in document.get("links", []) if {link.get("a"), link.get("b")} <= nodes]}
