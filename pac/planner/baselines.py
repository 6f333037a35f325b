"""Baseline plans in the planner's own cost model, for comparison:

- pipeline-only: every device is one stage, in the order given (like Eco-FL).
- data-only: every device holds the whole model (like EDDL); infeasible if any device cannot.
- single-device: the whole model on the one device that runs it fastest.

None of them has the activation cache: every epoch runs like the first.
"""

from __future__ import annotations

from pac.planner.cost import CostModel
from pac.planner.phase1 import Partition, best_partitions, candidate_orders, estimate, search

STRATEGIES = ("pac", "pipeline-only", "pipeline-ahead", "pipeline-best-order", "data-only", "single-device")
RUNS_AHEAD = ("pac", "pipeline-ahead")  # strategies whose frozen layers run ahead (the others: lock-step)


def pipeline_only(cost: CostModel, search_orders: bool = False) -> list[Partition]:
    """One stage per device, all devices, the best layer split for each micro-batch count.

    Like Eco-FL (and the paper's DP) the devices are taken in the order given; `search_orders` also
    tries the orders our planner tries, for a stronger baseline.
    """
    orders = candidate_orders(cost)[0] if search_orders else [tuple(range(cost.num_devices))]
    out = []
    for order in orders:
        for micro in cost.job.micro_batch_choices():
            found = best_partitions(cost, order, micro, max_group=1, use_all_devices=True)
            if cost.num_devices in found:
                out.append(found[cost.num_devices])
    return _ranked(cost, out)


def data_only(cost: CostModel) -> list[Partition]:
    """One stage of all layers on all devices; micro-batches at least as large as the group."""
    group = tuple(range(cost.num_devices))
    return _whole_model(cost, [group], minimum_batch=cost.num_devices)


def single_device(cost: CostModel) -> list[Partition]:
    """The whole model on one device (each device tried)."""
    return _whole_model(cost, [(d,) for d in range(cost.num_devices)], minimum_batch=1)


def _whole_model(cost: CostModel, groups: list[tuple[int, ...]], minimum_batch: int) -> list[Partition]:
    out = []
    layers = cost.num_layers
    for group in groups:
        for micro in cost.job.micro_batch_choices():
            batch = cost.job.batch_size // micro
            if batch < minimum_batch:
                continue
            bottleneck = cost.stage_cost(group, batch, 0, layers, in_flight=1)
            if bottleneck < float("inf"):
                out.append(Partition(((0, layers, group),), micro, batch, bottleneck))
    return _ranked(cost, out)


def _ranked(cost: CostModel, partitions: list[Partition]) -> list[Partition]:
    scored = sorted(((estimate(cost, p).minibatch_s, p.stages, p.micro_batches, p) for p in partitions),
                    key=lambda t: t[:3])
    return [t[3] for t in scored]


def candidates(cost: CostModel, strategy: str) -> list[Partition]:
    """Feasible phase-1 partitions of `strategy`, best estimate first (empty when nothing fits)."""
    if strategy == "pac":
        return search(cost)
    if strategy in ("pipeline-only", "pipeline-ahead"):
        return pipeline_only(cost)
    if strategy == "pipeline-best-order":
        return pipeline_only(cost, search_orders=True)
    if strategy == "data-only":
        return data_only(cost)
    if strategy == "single-device":
        return single_device(cost)
    raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
