"""The phase-1 DP against exhaustive search on small homes, under the same cost model."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from pac.planner.cost import INF, CostModel
from pac.planner.phase1 import best_partitions, candidate_orders
from pac.planner.synthetic import tiny_home
from pac.planner.workload import TrainingJob


def random_home(seed: int, layers: int, devices: int):
    rng = random.Random(seed)
    speeds = [rng.uniform(0.5, 2.0) for _ in range(devices)]
    times = [[rng.uniform(0.5, 1.5) / speeds[d] for _ in range(layers)] for d in range(devices)]
    budgets = [rng.randint(5_000, 20_000) for _ in range(devices)]
    return tiny_home(times, budgets, bandwidth_bytes_per_s=rng.uniform(50, 500), latency_s=0.01)


def ordered_groupings(devices: int, stages: int, max_group: int):
    """Every sequence of `stages` disjoint non-empty device groups (devices may stay idle)."""
    def rec(remaining: frozenset[int], left: int):
        if left == 0:
            yield ()
            return
        for size in range(1, min(max_group, len(remaining)) + 1):
            for group in itertools.combinations(sorted(remaining), size):
                for rest in rec(remaining - set(group), left - 1):
                    yield (group, *rest)
    yield from rec(frozenset(range(devices)), stages)


def brute_force(cost: CostModel, micro: int, stages: int) -> float:
    layers = cost.num_layers
    batch = cost.job.batch_size // micro
    best = INF
    for cuts in itertools.combinations(range(1, layers), stages - 1):
        bounds = (0, *cuts, layers)
        for groups in ordered_groupings(cost.num_devices, stages, batch):
            worst = 0.0
            for i, group in enumerate(groups):
                worst = max(worst, cost.stage_cost(group, batch, bounds[i], bounds[i + 1],
                                                   in_flight=min(stages - i, micro)))
                if worst >= best:
                    break
            best = min(best, worst)
    return best


@pytest.mark.parametrize("seed,layers,devices", [(1, 5, 3), (2, 6, 3), (3, 8, 3), (4, 6, 4), (5, 8, 4)])
def test_dp_matches_exhaustive_search(seed: int, layers: int, devices: int) -> None:
    home = random_home(seed, layers, devices)
    cost = CostModel(home, TrainingJob(samples=64, batch_size=4))
    orders, exhaustive = candidate_orders(cost)
    assert exhaustive
    feasible = 0
    for micro in cost.job.micro_batch_choices():
        dp: dict[int, float] = {}
        for order in orders:
            for s, partition in best_partitions(cost, order, micro).items():
                # The partition the DP reconstructs really has the bottleneck the DP computed.
                recomputed = max(cost.stage_cost(g, partition.micro_batch_size, x, y,
                                                 in_flight=min(len(partition.stages) - i, micro))
                                 for i, (x, y, g) in enumerate(partition.stages))
                assert math.isclose(recomputed, partition.bottleneck_s, rel_tol=1e-9)
                dp[s] = min(dp.get(s, INF), partition.bottleneck_s)
        for s in range(1, min(devices, layers) + 1):
            expected = brute_force(cost, micro, s)
            got = dp.get(s, INF)
            assert (got == expected == INF) or math.isclose(got, expected, rel_tol=1e-9), (micro, s, got, expected)
            feasible += expected < INF
    assert feasible > 0  # the case is not vacuous


def test_memory_budget_makes_stages_infeasible() -> None:
    # One device cannot hold all 4 layers; two can split them.
    home = tiny_home([[1.0] * 4, [1.0] * 4], [7_000, 7_000])
    cost = CostModel(home, TrainingJob(samples=8, batch_size=1))
    found = best_partitions(cost, (0, 1), 1)
    assert 1 not in found
    assert [(x, y) for x, y, _ in found[2].stages] == [(0, 2), (2, 4)]


def test_pipeline_only_uses_every_device_once() -> None:
    home = random_home(7, 8, 4)
    cost = CostModel(home, TrainingJob(samples=64, batch_size=4))
    found = best_partitions(cost, (0, 1, 2, 3), 4, max_group=1, use_all_devices=True)
    assert set(found) <= {4}
    for partition in found.values():
        assert sorted(d for _, _, g in partition.stages for d in g) == [0, 1, 2, 3]
