"""What the planner needs of a home, measured through the daemons; and plans given by hand."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable

from pac.cluster.context import Device
from pac.planner.plan import DeviceUse, Phase1Plan, Phase2Plan, Plan, StagePlan
from pac.planner.workload import TrainingJob
from pac.security import Identity


def profile_sizes(batch_size: int, micro_batches: int | None) -> list[int]:
    top = batch_size // micro_batches if micro_batches else batch_size
    return sorted({1, max(1, top // 4), max(1, top)})


async def measure_home(devices: list[Device], identity: Identity | None, job, sizes: list[int],
                       log_line: Callable[[str], None]) -> dict:
    """Profiles of every device (one measurement per host, reused by the daemons next time) and links."""
    from pac.net.daemon_client import DaemonClient
    from pacd.homeprofile import home_document, with_host

    by_host: dict[str, list[Device]] = {}
    for device in devices:
        by_host.setdefault(device.hostname or device.address, []).append(device)
    profiles, disks = [], {}
    for host, members in by_host.items():
        first = members[0]
        async with DaemonClient(first.address, identity, first.node_id if identity else None) as client:
            info = await client.info()
            started = time.perf_counter()
            profile = await client.profile(job.model.name_or_path, sizes, job.training.seq_len,
                                           job.training.reduction_factor, False, 3600.0,
                                           quantization=job.model.quantization)
            source = "stored" if profile["from_store"] else f"measured in {time.perf_counter() - started:.0f} s"
            log_line(f"profile of {job.model.name_or_path} on {host} ({source}; "
                     f"{len(members)} device(s) on this host)")
        for device in members:
            copy = with_host(dict(profile, node_id=device.node_id), {**info, "hostname": host})
            if device.memory_budget_bytes:
                copy["memory_budget_bytes"] = device.memory_budget_bytes
            profiles.append(copy)
            disks[device.node_id] = info["disk_free_bytes"]
    links = []
    for a, b in itertools.combinations(devices, 2):
        async with DaemonClient(a.address, identity, a.node_id if identity else None) as client:
            links.append(await client.probe(b.address, b.node_id if identity else "", 1 << 20, 3))
    return await probe_home(home_document(profiles, disks, links), devices, identity)


async def probe_home(document: dict, devices: list[Device], identity: Identity | None) -> dict:
    """Add to a home's profile document what a step pays beyond the devices' work: the controller's
    round trip to each device, and a ring AllReduce of the side network's gradients among them."""
    trips = await probe_round_trips(devices, identity)
    for entry in document["devices"]:
        entry["round_trip_s"] = trips[entry["name"]]
    if len(devices) > 1:
        model = document["model"]
        gradient = 4 * (sum(model["side_layer_params"]) + model.get("side_extra_params", 0))
        size = min(max(ALLREDUCE_PROBE_BYTES, int(gradient)), ALLREDUCE_PROBE_MAX_BYTES)
        document["allreduce_probe"] = await probe_allreduce(devices, identity, size)
    return document


# The AllReduce probe sums the side network's fp32 gradients (what phase 2 sums every step), at least
# ALLREDUCE_PROBE_BYTES and at most ALLREDUCE_PROBE_MAX_BYTES (its buffers count against a device's memory).
ALLREDUCE_PROBE_BYTES = 256 * 1024
ALLREDUCE_PROBE_MAX_BYTES = 4 << 20
ALLREDUCE_PROBE_ITERATIONS = 10
ROUND_TRIPS = 10
ROUND_TRIP_REPLY_BYTES = 1024  # about a step's reply (its loss and timeline)


async def probe_round_trips(devices: list[Device], identity: Identity | None) -> dict[str, float]:
    """Per device, the controller's round trip of an empty call sent to every device at once (as a step's
    calls are): what each phase-1 step pays per call beyond the devices' work (`step_gap`). The median
    of ROUND_TRIPS after one that warms up."""
    import asyncio
    import statistics

    from pac.net.daemon_client import DaemonClient

    async def one(device: Device, client: DaemonClient) -> float:
        began = time.perf_counter()
        await client.echo(ROUND_TRIP_REPLY_BYTES)
        return time.perf_counter() - began

    clients = [DaemonClient(d.address, identity, d.node_id if identity else None) for d in devices]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        rounds = [await asyncio.gather(*(one(d, c) for d, c in zip(devices, clients, strict=True)))
                  for _ in range(ROUND_TRIPS + 1)][1:]
    return {d.node_id: statistics.median(r[i] for r in rounds) for i, d in enumerate(devices)}


async def probe_allreduce(devices: list[Device], identity: Identity | None,
                          nbytes: int = ALLREDUCE_PROBE_BYTES) -> dict:
    """A ring AllReduce among every device, timed: what the planner needs to cost the ring's own time per
    step beyond its links (CostModel.ring_step_s). The first of the iterations warms up."""
    import asyncio
    import statistics
    import uuid

    from pac.net.daemon_client import DaemonClient

    members = [d.address for d in devices]
    group = f"probe/{uuid.uuid4().hex[:12]}"

    async def member(rank: int, device: Device) -> list[float]:
        async with DaemonClient(device.address, identity, device.node_id if identity else None) as client:
            return await client.allreduce_seconds(group, members, rank, nbytes // 4,
                                                  ALLREDUCE_PROBE_ITERATIONS)

    seconds = await asyncio.gather(*(member(r, d) for r, d in enumerate(devices)))
    per_iteration = [max(s[i] for s in seconds) for i in range(1, ALLREDUCE_PROBE_ITERATIONS)]
    return {"members": [d.node_id for d in devices], "bytes": nbytes,
            "seconds": statistics.median(per_iteration)}


def fixed_plan(model: str, job: TrainingJob, stages: list[tuple[int, int, list[str], list[int]]],
               micro_batches: int, phase2_shares: dict[str, int] | None, strategy: str = "fixed",
               run_ahead: int = 0) -> Plan:
    """A plan given by hand (tests and benchmarks): no simulated times."""
    staged = tuple(StagePlan(first, end, tuple(devices), tuple(shares)) for first, end, devices, shares in stages)
    devices = tuple(dict.fromkeys([d for s in staged for d in s.devices] + list(phase2_shares or {})))
    phase1 = Phase1Plan(micro_batches, max(1, job.batch_size // micro_batches), staged, 0.0, 0.0, 0.0, 0.0, 0.0,
                        run_ahead)
    phase2 = None
    if phase2_shares:
        phase2 = Phase2Plan(dict(phase2_shares), {}, (), 0.0, 0.0, 0.0)
    usage = tuple(DeviceUse(d, 0, 0.0, 0.0, 0, 0.0) for d in devices)
    # no sequence length: nothing was costed or fitted, so a job is checked only for the mini-batch it splits
    return Plan(strategy, model, devices, dataclasses.replace(job, seq_len=None), phase1, phase2, usage, 0.0,
                "given by hand")
