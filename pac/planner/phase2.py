"""Phase 2: data parallelism over the activation cache (paper §5.2).

Every step splits the mini-batch over the phase-2 devices in proportion to their measured side-network
speed (sample by sample, each to the device that would finish first), never giving a device more per step
than its memory holds or more per epoch than its disk holds. Then the cached hidden states move so that
each device holds every layer of its own samples, keeping on each device as many of the states it computed
in phase 1 as possible, and every device receives the side-network parameters it did not train in phase 1.

Which devices train: a device that joins shortens each step's compute but lengthens its AllReduce (and
devices of one machine share its cores, `profile.host_contention`), and may need cached states moved to
it. Devices join one at a time, each time the one that gives the fastest step; of these growing sets the
planner keeps the one with the least simulated time for the moves plus the phase-2 epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pac.planner.cost import CostModel
from pac.planner.errors import InfeasibleError
from pac.planner.memory import cache_bytes_per_sample, hidden_bytes_per_sample, phase2_memory
from pac.planner.phase1 import Partition
from pac.planner.profile import host_contention


@dataclass(frozen=True)
class Phase2Assignment:
    """Who trains what in phase 2 and what moves first. Devices are indices into home.devices."""

    devices: tuple[int, ...]  # every device of the home, in index order
    step_shares: tuple[tuple[int, ...], ...]  # per step: samples per device (the last step may be short)
    epoch_samples: tuple[int, ...]  # per device: samples it trains each epoch (sum of its step shares)
    moves: tuple[tuple[int, int, float, str], ...]  # (source, destination, bytes, "cache" | "side")

    @property
    def moved_bytes(self) -> float:
        return sum(m[2] for m in self.moves)


def step_shares(cost: CostModel, batch: int, per_step_cap: list[int],
                active: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Split `batch` samples over the `active` devices (default: all) by side-network speed, as slowed by
    sharing a machine with the other active devices, within each device's cap."""
    devices = cost.home.devices
    active = tuple(range(len(devices))) if active is None else active
    slow = host_contention(devices, active)
    counts = [0] * len(devices)
    for _ in range(batch):
        options = [i for i in active if counts[i] < per_step_cap[i]]
        if not options:
            raise InfeasibleError(
                f"phase 2 cannot place a mini-batch of {batch}: the devices' memory and disk hold only "
                f"{sum(per_step_cap[i] for i in active)} samples per step; use a smaller --batch-size or more "
                f"devices")
        best = min(options, key=lambda i: ((counts[i] + 1) * cost.phase2_sample_s(i) * slow[i], i))
        counts[best] += 1
    return tuple(counts)


def phase1_disk(cost: CostModel, partition: Partition) -> dict[int, float]:
    """Bytes of phase-1 cache shard each device holds at the end of epoch 1."""
    batch = partition.micro_batch_size
    out: dict[int, float] = {}
    for x, y, group in partition.stages:
        for device, share in zip(group, cost.shares(group, batch), strict=True):
            out[device] = out.get(device, 0.0) + cost.phase1_disk_bytes(share, batch, x, y)
    return out


def per_step_caps(cost: CostModel, partition: Partition | None = None) -> list[int]:
    """Most samples each device may train per step: its memory, and its disk over the epoch's steps.
    The phase-2 cache is gathered while the device still holds its phase-1 shard (peers read from it), so
    with a `partition` the shard's bytes count against the disk too. With copies of other devices' shares
    (`cache_copies` > 1) each sample of its own share is counted that many times: the copies a device
    holds are of its ring neighbours' shares, taken to be about as large as its own."""
    job, model = cost.job, cost.model
    steps = job.minibatches_per_epoch
    per_sample_disk = cache_bytes_per_sample(model, job) * job.cache_copies
    shard = phase1_disk(cost, partition) if partition is not None else {}
    caps = []
    for index, device in enumerate(cost.home.devices):
        memory_cap = 0
        while memory_cap < job.batch_size and phase2_memory(
                model, device, job, memory_cap + 1).total <= device.memory_budget_bytes:
            memory_cap += 1
        room = max(0.0, device.disk_budget_bytes - shard.get(index, 0.0))
        disk_cap = int(room // per_sample_disk) // steps if per_sample_disk > 0 else job.batch_size
        caps.append(min(memory_cap, disk_cap))
    return caps


def plan_phase2(cost: CostModel, partition: Partition) -> Phase2Assignment:
    """Which devices train, their shares, and the moves from where phase 1 left the cache and side
    parameters: the growing device set (see the module's text) with the least simulated time."""
    from pac.planner.simulator import phase2_step_s, simulate_phase2_epoch, simulate_transfers

    job = cost.job
    caps = per_step_caps(cost, partition)
    if sum(caps) < job.batch_size:
        step_shares(cost, job.batch_size, caps)  # raises the error that says what would fit
    chosen: tuple[int, ...] = ()
    candidates = []
    while len(chosen) < cost.num_devices:
        best = None
        for device in range(cost.num_devices):
            if device in chosen or caps[device] == 0:
                continue
            trial = tuple(sorted(chosen + (device,)))
            if sum(caps[i] for i in trial) < job.batch_size:  # not enough room yet: the roomiest joins
                key = (math.inf, -sum(caps[i] for i in trial), device)
            else:
                compute, reduce = phase2_step_s(cost, tuple(range(cost.num_devices)),
                                                step_shares(cost, job.batch_size, caps, trial))
                key = (compute + reduce, 0, device)
            if best is None or key < best[0]:
                best = (key, trial)
        if best is None:
            break
        chosen = best[1]
        if sum(caps[i] for i in chosen) >= job.batch_size:
            candidates.append(chosen)
    out, best_time = None, math.inf
    for active in candidates:
        assignment = _assignment(cost, partition, caps, active)
        moves_s, _ = simulate_transfers(cost, [(a, b, n) for a, b, n, _ in assignment.moves])
        epoch_s, _ = simulate_phase2_epoch(cost, assignment.devices, assignment.step_shares)
        total = moves_s + (job.epochs - 1) * epoch_s
        if total < best_time * (1 - 1e-9):  # a tie keeps the smaller set
            out, best_time = assignment, total
    assert out is not None
    return out


def _assignment(cost: CostModel, partition: Partition, caps: list[int], active: tuple[int, ...]
                ) -> Phase2Assignment:
    job = cost.job
    full, last = divmod(job.samples, job.batch_size)
    steps = [step_shares(cost, job.batch_size, caps, active)] * full
    if last:
        steps.append(step_shares(cost, last, caps, active))
    devices = tuple(range(cost.num_devices))
    epoch = tuple(sum(step[i] for step in steps) for i in devices)
    moves = _cache_moves(cost, partition, epoch) + _side_moves(cost, partition, epoch)
    return Phase2Assignment(devices, tuple(steps), epoch, tuple(moves))


def _position_owners(cost: CostModel, partition: Partition) -> list[list[tuple[int, float]]]:
    """For each position in a micro-batch: (device, cached bytes) per stage that computed it."""
    batch = partition.micro_batch_size
    per_layer = hidden_bytes_per_sample(cost.model, cost.job.cache_bytes)
    owners: list[list[tuple[int, float]]] = [[] for _ in range(batch)]
    for x, y, group in partition.stages:
        layers = (y - x) + (1 if x == 0 else 0)  # the first stage also caches h_0
        position = 0
        for device, share in zip(group, cost.shares(group, batch), strict=True):
            for p in range(position, position + share):
                owners[p].append((device, layers * per_layer))
            position += share
    return owners


def _cache_moves(cost: CostModel, partition: Partition, epoch: tuple[int, ...]
                 ) -> list[tuple[int, int, float, str]]:
    """Assign samples (grouped by their position in a micro-batch, which fixes who cached them) to
    devices, largest locally held bytes first, then list what must move."""
    batch = partition.micro_batch_size
    owners = _position_owners(cost, partition)
    supply = [cost.job.samples // batch + (1 if p < cost.job.samples % batch else 0) for p in range(batch)]
    demand = list(epoch)
    local = [[sum(b for d, b in owners[p] if d == device) for device in range(len(epoch))] for p in range(batch)]
    pairs = sorted(((local[p][d], p, d) for p in range(batch) for d in range(len(epoch))),
                   key=lambda t: (-t[0], t[1], t[2]))
    assigned: dict[tuple[int, int], int] = {}
    for _, p, d in pairs:
        take = min(supply[p], demand[d])
        if take:
            assigned[(p, d)] = assigned.get((p, d), 0) + take
            supply[p] -= take
            demand[d] -= take
    traffic: dict[tuple[int, int], float] = {}
    for (p, d), count in sorted(assigned.items()):
        for owner, nbytes in owners[p]:
            if owner != d:
                traffic[(owner, d)] = traffic.get((owner, d), 0.0) + count * nbytes
    return [(a, b, n, "cache") for (a, b), n in sorted(traffic.items())]


def _side_moves(cost: CostModel, partition: Partition, epoch: tuple[int, ...]) -> list[tuple[int, int, float, str]]:
    """Every phase-2 device needs each stage's side parameters and optimiser state it does not hold."""
    state = cost.job.side_state_bytes_per_param - cost.job.gradient_bytes_per_param
    out = []
    for x, y, group in partition.stages:
        nbytes = cost.stage_gradient_bytes(x, y) / cost.job.gradient_bytes_per_param * state
        for k, device in enumerate(d for d in range(len(epoch)) if epoch[d] > 0 and d not in group):
            out.append((group[k % len(group)], device, nbytes, "side"))
    return out
