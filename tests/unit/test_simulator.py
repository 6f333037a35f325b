"""The simulator against timelines worked out by hand, and the Eq. 4–6 estimate against the simulator."""

from __future__ import annotations

import math

import pytest

from pac.planner.cost import CostModel
from pac.planner.job import TrainingJob
from pac.planner.phase1 import Partition, estimate
from pac.planner.simulator import one_f_one_b, simulate_phase1, simulate_transfers
from pac.planner.synthetic import tiny_home


def pipeline(stage_seconds: list[float], micro: int, latency: float = 0.0, backward_fraction: float = 1.0):
    """Device i runs only layer i (in stage_seconds[i] per sample); stage i = layer i on device i."""
    n = len(stage_seconds)
    times = [[stage_seconds[d] if layer == d else 100.0 for layer in range(n)] for d in range(n)]
    home = tiny_home(times, backward_fraction=backward_fraction, latency_s=latency, bandwidth_bytes_per_s=1e15)
    cost = CostModel(home, TrainingJob(samples=micro * 4, batch_size=micro))
    partition = Partition(tuple((i, i + 1, (i,)) for i in range(n)), micro, 1, max(stage_seconds))
    return cost, partition


def spans(sim, resource: str) -> list[tuple[str, int, float, float]]:
    return [(e.kind, e.micro_batch, round(e.start, 9), round(e.end, 9)) for e in sim.events
            if e.resource == resource]


def test_one_f_one_b_order() -> None:
    assert one_f_one_b(0, 3, 3) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("B", 1), ("B", 2)]
    assert one_f_one_b(1, 3, 3) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("B", 2)]
    assert one_f_one_b(2, 3, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]


def test_two_stages_with_transfers_by_hand() -> None:
    # f0 = b0 = 1, f1 = b1 = 3, every transfer 0.5 s, M = 2.
    cost, partition = pipeline([1.0, 3.0], micro=2, latency=0.5)
    sim = simulate_phase1(cost, partition)
    assert spans(sim, "stage 0") == [("F", 0, 0, 1), ("F", 1, 1, 2), ("B", 0, 8, 9), ("B", 1, 14, 15)]
    assert spans(sim, "stage 1") == [("F", 0, 1.5, 4.5), ("B", 0, 4.5, 7.5), ("F", 1, 7.5, 10.5),
                                     ("B", 1, 10.5, 13.5)]
    assert spans(sim, "link 0->1") == [("send", 0, 1, 1.5), ("send", 1, 2, 2.5)]
    assert spans(sim, "link 1->0") == [("send", 0, 7.5, 8), ("send", 1, 13.5, 14)]
    assert sim.minibatch_s == pytest.approx(15.0)
    assert sim.peak_in_flight == (2, 1)
    assert sim.bubble_fraction == pytest.approx(1 - (2 * 2 + 2 * 6) / (2 * 15))


def test_two_stages_slow_first_stage_by_hand() -> None:
    # f0 = b0 = 3, f1 = b1 = 1, no transfer time, M = 2: the round trip after stage 0 is hidden.
    cost, partition = pipeline([3.0, 1.0], micro=2)
    sim = simulate_phase1(cost, partition)
    assert spans(sim, "stage 0") == [("F", 0, 0, 3), ("F", 1, 3, 6), ("B", 0, 6, 9), ("B", 1, 9, 12)]
    assert sim.minibatch_s == pytest.approx(12.0)
    assert estimate(cost, partition).minibatch_s == pytest.approx(12.0)


def test_three_stages_uniform_by_hand() -> None:
    # f = 1, b = 2, M = 3: 1F1B takes (M + S - 1)(f + b) = 15 s.
    cost, partition = pipeline([1.0, 1.0, 1.0], micro=3, backward_fraction=2.0)
    sim = simulate_phase1(cost, partition)
    assert spans(sim, "stage 0") == [("F", 0, 0, 1), ("F", 1, 1, 2), ("F", 2, 2, 3), ("B", 0, 7, 9),
                                     ("B", 1, 10, 12), ("B", 2, 13, 15)]
    assert spans(sim, "stage 1") == [("F", 0, 1, 2), ("F", 1, 2, 3), ("B", 0, 5, 7), ("F", 2, 7, 8),
                                     ("B", 1, 8, 10), ("B", 2, 11, 13)]
    assert spans(sim, "stage 2") == [("F", 0, 2, 3), ("B", 0, 3, 5), ("F", 1, 5, 6), ("B", 1, 6, 8),
                                     ("F", 2, 8, 9), ("B", 2, 9, 11)]
    assert sim.minibatch_s == pytest.approx(15.0)
    assert estimate(cost, partition).minibatch_s == pytest.approx(15.0)


def test_three_stages_with_transfers_by_hand() -> None:
    # f = 1, b = 2, transfers 0.5 s each way, M = 2.
    cost, partition = pipeline([1.0, 1.0, 1.0], micro=2, latency=0.5, backward_fraction=2.0)
    sim = simulate_phase1(cost, partition)
    assert spans(sim, "stage 0") == [("F", 0, 0, 1), ("F", 1, 1, 2), ("B", 0, 9, 11), ("B", 1, 12, 14)]
    assert spans(sim, "stage 1") == [("F", 0, 1.5, 2.5), ("F", 1, 2.5, 3.5), ("B", 0, 6.5, 8.5),
                                     ("B", 1, 9.5, 11.5)]
    assert spans(sim, "stage 2") == [("F", 0, 3, 4), ("B", 0, 4, 6), ("F", 1, 6, 7), ("B", 1, 7, 9)]
    assert sim.minibatch_s == pytest.approx(14.0)


def test_allreduce_is_added_after_each_stage_drains() -> None:
    # Two devices in one stage: ring AllReduce of the side gradients, 2(n-1)/n * bytes / bw + 2(n-1) lat.
    home = tiny_home([[1.0, 1.0], [1.0, 1.0]], latency_s=0.25, bandwidth_bytes_per_s=1e3)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=2))
    partition = Partition(((0, 2, (0, 1)),), 1, 2, 3.0)
    sim = simulate_phase1(cost, partition)
    gradient_bytes = 2 * 10 * 4  # 2 layers x 10 side params x fp32
    allreduce = 2 * 1 / 2 * gradient_bytes / 1e3 + 2 * 1 * 0.25
    # Each device takes 1 sample: forward 2 x 1 s, backward 2 x 0.5 s.
    assert sim.minibatch_s == pytest.approx(2.0 + 1.0 + allreduce)
    assert math.isclose(cost.allreduce((0, 1), gradient_bytes), allreduce)


def test_transfers_serialise_per_sender_and_receiver() -> None:
    home = tiny_home([[1.0], [1.0], [1.0]], latency_s=0.0, bandwidth_bytes_per_s=100.0)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=2))
    finish, events = simulate_transfers(cost, [(0, 1, 100.0), (0, 2, 100.0), (1, 2, 100.0)])
    assert [(e.start, e.end) for e in events] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert finish == 3.0
