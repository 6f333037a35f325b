"""Play a plan forward, event by event, and measure it.

Phase 1, one mini-batch: each stage runs its micro-batches one-forward-one-backward (warm-up of
min(stages after it, M) forwards, then alternate, then drain), its group in lock-step (the slowest device
of the group sets each op's length). A stage boundary has one channel each way; a micro-batch's transfer
starts when it is produced and the channel is free. As in the runtime (`StageReplica.run_step`), each stage,
once its own last backward is done and its sends are delivered, AllReduces its side-network gradients in
its group while the stages before it are still draining. Mini-batches are separated by the optimiser step
(the controller applies it once every stage is done), so an epoch is the mini-batch time times the number
of mini-batches.

Between the phases the cached states and side parameters move (each device sends one transfer at a time
and receives one at a time); phase 2 then runs data-parallel steps over the cache with a ring AllReduce.

Every resource serves its work in a fixed order, so event times follow from their dependencies alone;
the simulator computes them in dependency order and keeps every event for the Gantt chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pac.planner.cost import CostModel
from pac.planner.phase1 import Partition


@dataclass(frozen=True)
class Event:
    """One busy interval of one resource (a stage, a boundary channel, a device, a transfer)."""

    resource: str  # "stage 0", "link 0->1", "link 1->0", a device name
    kind: str  # "F", "B", "send", "AR", "move", "train"
    micro_batch: int  # micro-batch (phase 1) or step (phase 2); -1 where none
    start: float
    end: float


@dataclass(frozen=True)
class Phase1Simulation:
    """One simulated phase-1 mini-batch (running ahead: the steady state of several)."""

    minibatch_s: float
    bubble_fraction: float  # idle share of the stages' time (compute slots not used)
    peak_in_flight: tuple[int, ...]  # per stage: micro-batches forward-done but not yet backward-done
    peak_memory_bytes: dict[str, float]  # per device of the pipeline
    events: tuple[Event, ...]
    run_ahead: int = 0  # mini-batches the frozen layers ran ahead (0: lock-step)
    first_minibatch_s: float | None = None  # running ahead: the epoch's first, which nothing ran ahead of

    def epoch_s(self, minibatches: int) -> float:
        """An epoch of `minibatches` mini-batches (the run-ahead restarts with every epoch)."""
        if minibatches <= 0:
            return 0.0
        first = self.minibatch_s if self.first_minibatch_s is None else self.first_minibatch_s
        return first + (minibatches - 1) * self.minibatch_s


def one_f_one_b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """The op order of one stage under 1F1B: [("F", 0), ("F", 1), ("B", 0), ...]."""
    warm = min(stages - stage - 1, micro_batches)
    ops = [("F", j) for j in range(warm)]
    for j in range(micro_batches - warm):
        ops += [("F", warm + j), ("B", j)]
    ops += [("B", j) for j in range(micro_batches - warm, micro_batches)]
    return ops


def simulate_phase1(cost: CostModel, partition: Partition) -> Phase1Simulation:
    """Simulate one mini-batch of `partition` under the shared cost model, lock-step, then the optimiser
    step on every stage at once (running ahead: pac.planner.ahead.simulate_ahead)."""
    stages, micro, batch = partition.stages, partition.micro_batches, partition.micro_batch_size
    s = len(stages)
    times = [cost.stage_times(g, batch, x, y) for x, y, g in stages]
    comm = [cost.boundary_times(stages[i][2], stages[i + 1][2], batch) for i in range(s - 1)]
    allreduce = [cost.allreduce(g, cost.stage_gradient_bytes(x, y)) for x, y, g in stages]
    ops = [one_f_one_b(i, s, micro) for i in range(s)]
    done: dict[tuple[str, int, int], float] = {}  # ("F"|"B", stage, j) -> end time
    arrive_f: dict[tuple[int, int], float] = {}  # (receiving stage, j) -> arrival
    arrive_b: dict[tuple[int, int], float] = {}
    link_f_free, link_b_free = [0.0] * max(s - 1, 0), [0.0] * max(s - 1, 0)  # when each link is free again
    stage_free = [0.0] * s
    position, in_flight, peak = [0] * s, [0] * s, [0] * s  # next op; micro-batches held; their most
    events: list[Event] = []
    remaining = sum(len(o) for o in ops)
    while remaining:
        progressed = False
        for i in range(s):
            while position[i] < len(ops[i]):
                kind, j = ops[i][position[i]]
                if kind == "F":
                    ready = 0.0 if i == 0 else arrive_f.get((i, j))
                else:
                    ready = done.get(("F", i, j)) if i == s - 1 else arrive_b.get((i, j))
                if ready is None:
                    break
                start = max(ready, stage_free[i])
                end = start + (times[i][0] if kind == "F" else times[i][1])
                stage_free[i] = end
                done[(kind, i, j)] = end
                events.append(Event(f"stage {i}", kind, j, start, end))
                in_flight[i] += 1 if kind == "F" else -1
                peak[i] = max(peak[i], in_flight[i])
                if kind == "F" and i < s - 1:
                    begin = max(end, link_f_free[i])
                    link_f_free[i] = arrive_f[(i + 1, j)] = begin + comm[i][0]
                    if comm[i][0] > 0:
                        events.append(Event(f"link {i}->{i + 1}", "send", j, begin, link_f_free[i]))
                if kind == "B" and i > 0:
                    begin = max(end, link_b_free[i - 1])
                    link_b_free[i - 1] = arrive_b[(i - 1, j)] = begin + comm[i - 1][1]
                    if comm[i - 1][1] > 0:
                        events.append(Event(f"link {i}->{i - 1}", "send", j, begin, link_b_free[i - 1]))
                position[i] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("1F1B schedule deadlocked; this is a bug in the simulator")
    finish = _end_with_allreduce(stage_free, link_b_free, allreduce, events) + step_gap(cost, partition)
    busy = sum(micro * (f + b) for f, b in times)
    bubble = 1.0 - busy / (s * finish) if finish > 0 else 0.0
    memory: dict[str, float] = {}
    for i, (x, y, group) in enumerate(stages):
        for device, share in zip(group, cost.shares(group, batch), strict=True):
            name = cost.home.devices[device].name
            memory[name] = cost.stage_memory(device, share, x, y, peak[i]).total
    events.sort(key=lambda e: (e.start, e.resource, e.end))
    return Phase1Simulation(finish, bubble, tuple(peak), memory, tuple(events))


def step_gap(cost: CostModel, partition: Partition) -> float:
    """Between one phase-1 mini-batch's end and the next's start: the slowest stage's optimiser step, and
    the controller's round trip (the step's replies, the next RunStep, which carries the pipeline-wide
    clip of a plan with more than one stage), the slowest device's as measured."""
    trip = max(cost.home.devices[d].round_trip_s for _, _, group in partition.stages for d in group)
    return max(cost.optimizer_s(g, x, y) for x, y, g in partition.stages) + trip


def _end_with_allreduce(stage_free: list[float], link_b_free: list[float], allreduce: list[float],
                        events: list[Event]) -> float:
    """When the mini-batch ends. Like StageReplica.run_step: each stage's last backward, then its sends
    delivered (its last one is the gradient of that backward to the stage before), then its group's
    AllReduce; the other stages go on meanwhile. It ends when every stage is done (then the optimiser step)."""
    finish = 0.0
    for i, free in enumerate(stage_free):
        start = max(free, link_b_free[i - 1] if i > 0 else 0.0)
        if allreduce[i] > 0:
            events.append(Event(f"stage {i}", "AR", -1, start, start + allreduce[i]))
        finish = max(finish, start + allreduce[i])
    return finish


def simulate_transfers(cost: CostModel, moves: Sequence[tuple[int, int, float]], label: str = "move"
                       ) -> tuple[float, list[Event]]:
    """Bulk transfers (source, destination, bytes): each device sends one and receives one at a time,
    transfers start in the given order as soon as both ends are free. Returns (makespan, events)."""
    send_free: dict[int, float] = {}
    recv_free: dict[int, float] = {}
    events, finish = [], 0.0
    for source, destination, nbytes in moves:
        duration = cost.transfer(source, destination, nbytes)
        if duration <= 0:
            continue
        start = max(send_free.get(source, 0.0), recv_free.get(destination, 0.0))
        end = start + duration
        send_free[source] = recv_free[destination] = end
        name = f"{cost.home.devices[source].name}->{cost.home.devices[destination].name}"
        events.append(Event(name, label, -1, start, end))
        finish = max(finish, end)
    return finish, events


def phase2_step_s(cost: CostModel, devices: Sequence[int], shares: Sequence[int]) -> tuple[float, float]:
    """(compute, AllReduce) seconds of one phase-2 step: each device trains its share from the cache,
    slowed where devices of one machine share its cores."""
    compute = max(_phase2_busy(cost, devices, shares).values(), default=0.0)
    active = [d for d, n in zip(devices, shares, strict=True) if n > 0]
    gradient = cost.model.side_params * cost.job.gradient_bytes_per_param
    return compute, cost.allreduce(active, gradient)


def _phase2_busy(cost: CostModel, devices: Sequence[int], shares: Sequence[int]) -> dict[int, float]:
    """Seconds each device with a share computes in one phase-2 step."""
    from pac.planner.memory import cache_bytes_per_sample
    from pac.planner.profile import host_contention

    per_sample_read = cache_bytes_per_sample(cost.model, cost.job) * cost.job.token_fraction
    active = [d for d, n in zip(devices, shares, strict=True) if n > 0]
    slow = host_contention(cost.home.devices, active)
    out = {}
    for device, share in zip(devices, shares, strict=True):
        if share:
            profile = cost.home.devices[device]
            fixed = 2 * profile.call_s + cost.model.side_params * profile.optimizer_s_per_param  # calls, AdamW
            out[device] = slow[device] * (fixed + share * (cost.phase2_sample_s(device, share)
                                                           + per_sample_read / profile.cache_read_bytes_per_s))
    return out


def simulate_phase2_epoch(cost: CostModel, devices: Sequence[int], step_shares: Sequence[Sequence[int]]
                          ) -> tuple[float, list[Event]]:
    """One phase-2 epoch: the steps in turn, each compute then AllReduce. Returns (seconds, events)."""
    now, events = 0.0, []
    seen: dict[tuple[int, ...], tuple[float, float, dict[int, float]]] = {}  # steps mostly repeat
    for step, shares in enumerate(step_shares):
        key = tuple(shares)
        if key not in seen:
            seen[key] = (*phase2_step_s(cost, devices, shares), _phase2_busy(cost, devices, shares))
        compute, allreduce, busy_by_device = seen[key]
        for device, busy in busy_by_device.items():
            events.append(Event(cost.home.devices[device].name, "train", step, now, now + busy))
        now += compute
        if allreduce > 0:
            events.append(Event("all", "AR", step, now, now + allreduce))
        now += allreduce
    return now, events
