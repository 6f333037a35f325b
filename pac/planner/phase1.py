"""Phase 1: cut the layers into stages and the devices into groups (paper §5.1, Eq. 2–6).

The dynamic programme (Eq. 2–3) runs over (first layer of the rest, first device of the rest, stages),
taking the devices in a given order: a stage is a contiguous run of layers on a contiguous run of the
order; devices left at the end of the order stay idle. It is written over suffixes so that a stage knows
how many stages follow it, which is what 1F1B's in-flight activations (and so its memory) depend on.
Every grouping of devices into stages is a contiguous split of *some* order, so the DP is exact once it
sees the right order: small homes try every order that differs (identical devices are interchangeable);
larger homes try a fixed set of orders (by memory, by speed, as given) and keep the best.

Among the best partition for every stage count, order and micro-batch count, the stage count is chosen
by the generalised Eq. 4–6 estimate and the few best candidates are then played by the simulator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pac.planner.cost import INF, CostModel

EXHAUSTIVE_ORDER_LIMIT = 120  # try every distinct device order when there are at most this many
ORDERS_KEPT_FOR_ALL_MICRO_BATCHES = 2  # large homes: orders kept after the first micro-batch pass


@dataclass(frozen=True)
class Partition:
    """One phase-1 configuration: stages as (first layer, end layer, device indices), in pipeline order."""

    stages: tuple[tuple[int, int, tuple[int, ...]], ...]
    micro_batches: int
    micro_batch_size: int
    bottleneck_s: float  # W of Eq. 2: the slowest stage's forward + backward of one micro-batch

    @property
    def devices_used(self) -> int:
        return sum(len(g) for _, _, g in self.stages)


def best_partitions(cost: CostModel, order: Sequence[int], micro_batches: int, *,
                    max_group: int | None = None, use_all_devices: bool = False) -> dict[int, Partition]:
    """Eq. 2–3 for one device order: the best partition into s stages, for every feasible s.

    `max_group=1` gives pure pipelines; `use_all_devices` forbids idle devices (the pipeline baseline).
    """
    order = tuple(order)
    layers, devices = cost.num_layers, len(order)
    batch = cost.job.batch_size // micro_batches
    # A device with no sample of the micro-batch would only hold memory: groups are at most `batch` wide.
    max_group = min(devices if max_group is None else max_group, batch)
    # Stacked group matrices: by group size m, the group order[n:n+m] for every n.
    stacks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for m in range(1, max_group + 1):
        mats = [cost.group_matrices(order[n:n + m], batch) for n in range(devices - m + 1)]
        stacks[m] = (np.stack([t for t, _ in mats]), np.stack([f for _, f in mats]))
    # value[s][x, n]: best bottleneck for layers [x, L) with devices order[n:], in exactly s stages.
    previous = np.full((layers + 1, devices + 1), INF)
    previous[layers, :] = 0.0 if not use_all_devices else INF
    if use_all_devices:
        previous[layers, devices] = 0.0
    choices: list[tuple[np.ndarray, np.ndarray]] = []
    values: list[np.ndarray] = [previous]
    out: dict[int, Partition] = {}
    for s in range(1, min(devices, layers) + 1):
        in_flight = min(s, micro_batches)
        current = np.full((layers + 1, devices + 1), INF)
        best_q = np.zeros((layers + 1, devices + 1), dtype=np.int64)
        best_m = np.zeros((layers + 1, devices + 1), dtype=np.int64)
        for m in range(1, min(max_group, devices - s + 1) + 1):
            groups = devices - s + 2 - m  # group order[n:n+m] with n + m + (s - 1) <= devices
            rest = previous[:, m:m + groups].T  # [n, q]: best for layers [q, L) with order[n+m:]
            if not np.isfinite(rest).any():
                continue
            time, flights = stacks[m][0][:groups], stacks[m][1][:groups]
            stage = np.where(flights >= in_flight, time, INF)  # [n, x, q]
            candidate = np.maximum(stage, rest[:, None, :])
            q = np.argmin(candidate, axis=2)  # [n, x]
            value = np.take_along_axis(candidate, q[:, :, None], axis=2)[:, :, 0].T  # [x, n]
            better = value < current[:, :groups]
            current[:, :groups] = np.where(better, value, current[:, :groups])
            best_q[:, :groups] = np.where(better, q.T, best_q[:, :groups])
            best_m[:, :groups] = np.where(better, m, best_m[:, :groups])
        choices.append((best_q, best_m))
        values.append(current)
        previous = current
        if math.isfinite(current[0, 0]):
            out[s] = Partition(_walk(choices, s, order), micro_batches, batch, float(current[0, 0]))
    return out


def _walk(choices: list[tuple[np.ndarray, np.ndarray]], stages: int, order: tuple[int, ...]
          ) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    out, x, n = [], 0, 0
    for s in range(stages, 0, -1):
        best_q, best_m = choices[s - 1]
        q, m = int(best_q[x, n]), int(best_m[x, n])
        out.append((x, q, order[n:n + m]))
        x, n = q, n + m
    return tuple(out)


def device_types(cost: CostModel) -> list[int]:
    """Type id of each device: devices with identical profiles (but for the name) share one."""
    seen: dict[tuple, int] = {}
    out = []
    for d in cost.home.devices:
        key = (d.memory_budget_bytes, d.disk_budget_bytes, d.batch_sizes, d.forward_s, d.backward_s,
               d.side_sample_s, d.runtime_overhead_bytes, d.cache_read_bytes_per_s)
        out.append(seen.setdefault(key, len(seen)))
    # Links make devices different too: two devices with different links are not interchangeable.
    link_rows = [tuple(cost.link(a, b) for b in range(cost.num_devices) if b != a)
                 for a in range(cost.num_devices)]
    if len(set(link_rows)) > 1:
        return list(range(cost.num_devices))
    return out


def candidate_orders(cost: CostModel) -> tuple[list[tuple[int, ...]], bool]:
    """Device orders to try, and whether they are every order that differs (exhaustive)."""
    types = device_types(cost)
    n = cost.num_devices
    counts = [types.count(t) for t in sorted(set(types))]
    distinct = math.factorial(n) // math.prod(math.factorial(c) for c in counts)
    if distinct <= EXHAUSTIVE_ORDER_LIMIT:
        seen: set[tuple[int, ...]] = set()
        orders = []
        for perm in itertools.permutations(range(n)):
            signature = tuple(types[i] for i in perm)
            if signature not in seen:
                seen.add(signature)
                orders.append(_canonical(signature, types))
        return orders, True
    devices = cost.home.devices
    speed = [cost.job.batch_size / max(cost.model_time(i, cost.job.batch_size), 1e-12) for i in range(n)]
    memory = [d.memory_budget_bytes for d in devices]
    keys = [
        lambda i: (-memory[i], -speed[i], i),
        lambda i: (-memory[i], speed[i], i),
        lambda i: (memory[i], -speed[i], i),
        lambda i: (-speed[i], -memory[i], i),
        lambda i: (speed[i], -memory[i], i),
        lambda i: i,
    ]
    orders, seen = [], set()
    for key in keys:
        order = tuple(sorted(range(n), key=key))
        signature = tuple(types[i] for i in order)
        if signature not in seen:
            seen.add(signature)
            orders.append(_canonical(signature, types))
    return orders, False


def _canonical(signature: tuple[int, ...], types: list[int]) -> tuple[int, ...]:
    """The order with this type sequence that takes same-type devices by ascending index."""
    pools = {t: [i for i, ti in enumerate(types) if ti == t] for t in set(types)}
    taken = {t: 0 for t in pools}
    out = []
    for t in signature:
        out.append(pools[t][taken[t]])
        taken[t] += 1
    return tuple(out)


@dataclass(frozen=True)
class Estimate:
    """The generalised Eq. 4–6 for one partition."""

    minibatch_s: float
    forward_s: tuple[float, ...]  # e_f(i)
    backward_s: tuple[float, ...]  # e_b(i)
    send_forward_s: tuple[float, ...]  # c_f(i), boundary i -> i+1
    send_backward_s: tuple[float, ...]  # c_b(i)
    allreduce_s: tuple[float, ...]  # AR(i)


def estimate(cost: CostModel, partition: Partition) -> Estimate:
    """Time of one mini-batch under 1F1B, from the per-stage and per-boundary times (Eq. 4–6).

    The paper's L_b + L_e + L_n assumes the last stage is the slowest; here every stage k is tried as
    the one that sets the pace: fill up to k, M forward+backward pairs on k (plus whatever of the first
    micro-batch's round trip beyond k its warm-up forwards cannot hide), drain back to stage 0, and each
    stage's AllReduce from its last backward's delivered gradient on (overlapping the drain of the stages
    before it), as the runtime runs it.
    """
    stages = partition.stages
    batch, micro = partition.micro_batch_size, partition.micro_batches
    times = [cost.stage_times(g, batch, x, y) for x, y, g in stages]
    fwd = [t[0] for t in times]
    bwd = [t[1] for t in times]
    comm = [cost.boundary_times(stages[i][2], stages[i + 1][2], batch) for i in range(len(stages) - 1)]
    cf = [c[0] for c in comm]
    cb = [c[1] for c in comm]
    ar = [cost.allreduce(g, cost.stage_gradient_bytes(x, y)) for x, y, g in stages]
    end = one_f_one_b_time(fwd, bwd, cf, cb, ar, micro) + max(cost.optimizer_s(g, x, y) for x, y, g in stages)
    return Estimate(end, tuple(fwd), tuple(bwd), tuple(cf), tuple(cb), tuple(ar))


def one_f_one_b_time(fwd: Sequence[float], bwd: Sequence[float], cf: Sequence[float], cb: Sequence[float],
                     ar: Sequence[float], micro: int) -> float:
    """`estimate`'s mini-batch from per-stage forward, backward and AllReduce times and per-boundary
    transfer times."""
    s = len(fwd)
    finish = 0.0
    for k in range(s):
        fill = sum(fwd[i] + cf[i] for i in range(k))
        drain = sum(cb[i] + bwd[i] for i in range(k))
        trip = sum(cf[j - 1] + fwd[j] + bwd[j] + cb[j - 1] for j in range(k + 1, s))
        warm = min(s - k - 1, micro - 1) * fwd[k]
        finish = max(finish, fill + micro * (fwd[k] + bwd[k]) + max(0.0, trip - warm) + drain)
    # Stage i's last backward ends the drain below it before the finish; its AllReduce starts once that
    # backward's gradient is delivered to stage i-1 (the runtime flushes its sends first).
    return max(finish - sum(cb[j] + bwd[j] for j in range(i)) + (cb[i - 1] if i > 0 else 0.0) + ar[i]
               for i in range(s))


def search(cost: CostModel, *, orders: list[tuple[int, ...]] | None = None,
           exhaustive: bool | None = None) -> list[Partition]:
    """Every DP-optimal partition (one per order, micro-batch count and stage count), best estimate first."""
    if orders is None:
        orders, exhaustive = candidate_orders(cost)
    choices = cost.job.micro_batch_choices()
    results: dict[tuple, tuple[float, Partition]] = {}

    def run(order: tuple[int, ...], micro: int) -> None:
        for partition in best_partitions(cost, order, micro).values():
            key = (partition.stages, partition.micro_batches)
            if key not in results:
                results[key] = (estimate(cost, partition).minibatch_s, partition)

    if exhaustive or len(choices) == 1:
        for order in orders:
            for micro in choices:
                run(order, micro)
    else:
        first = choices[len(choices) // 2]
        per_order = []
        for order in orders:
            before = set(results)
            run(order, first)
            found = [results[k][0] for k in results if k not in before]
            per_order.append((min(found, default=INF), order))
        per_order.sort(key=lambda t: t[0])
        for _, order in per_order[:ORDERS_KEPT_FOR_ALL_MICRO_BATCHES]:
            for micro in choices:
                if micro != first:
                    run(order, micro)
    ranked = sorted(results.values(), key=lambda t: (t[0], len(t[1].stages), t[1].devices_used,
                                                      t[1].stages, t[1].micro_batches))
    return [p for _, p in ranked]
