"""The simulator against timelines worked out by hand, and the Eq. 4–6 estimate against the simulator."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pac.planner.ahead import AheadStage, ahead_timeline, simulate_ahead
from pac.planner.cost import CostModel
from pac.planner.phase1 import Partition, estimate
from pac.planner.simulator import one_f_one_b, simulate_phase1, simulate_transfers
from pac.planner.synthetic import tiny_home
from pac.planner.workload import TrainingJob


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
    # Two devices in one stage; the side gradients are 2 layers x 10 params x fp32 = 80 bytes.
    home = tiny_home([[1.0, 1.0], [1.0, 1.0]], latency_s=0.25, bandwidth_bytes_per_s=1e3)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=2))
    partition = Partition(((0, 2, (0, 1)),), 1, 2, 3.0)
    sim = simulate_phase1(cost, partition)
    # The ring: 2 chunks of 40 bytes, one segment each (0.04 s on the wire). Step 0 sends at 0-0.04, it
    # arrives at 0.29; step 1 forwards it at 0.29-0.33; it arrives at 0.58; the next rank acknowledges
    # the last data at 0.83.
    allreduce = 0.04 + 0.25 + 0.04 + 0.25 + 0.25
    assert cost.allreduce((0, 1), 80.0) == pytest.approx(allreduce)
    # Each device takes 1 sample: forward 2 x 1 s, backward 2 x 0.5 s.
    assert sim.minibatch_s == pytest.approx(2.0 + 1.0 + allreduce)
    assert spans(sim, "stage 0")[-1] == ("AR", -1, 3.0, 3.83)


def test_a_stage_allreduces_while_the_stages_before_it_drain() -> None:
    # Stage 0 = device 0 (layer 0), stage 1 = devices 1 and 2 (layer 1), one micro-batch of 2 samples.
    # Forward 1 s per sample and layer, backward 2 s; links 1000 B/s with 0.5 s latency.
    home = tiny_home([[1.0, 100.0], [100.0, 1.0], [100.0, 1.0]], backward_fraction=2.0, latency_s=0.5,
                     bandwidth_bytes_per_s=1e3)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=2))
    partition = Partition(((0, 1, (0,)), (1, 2, (1, 2))), 1, 2, 6.0)
    sim = simulate_phase1(cost, partition)
    # Stage 0 computes both samples: F 0-2. Each sample goes to its device of stage 1: (h, a) is
    # 1 x (8 + 1) x 2 = 18 bytes, 0.5 + 0.018 s. Stage 1: F 2.518-3.518, B -5.518; grad a (2 bytes) is
    # delivered at 6.02, when stage 0 starts its backward (4 s) and stage 1 its AllReduce of 40 bytes
    # (chunks of 20 bytes: sent 0.02 s, arrives 0.5 s later, forwarded, arrives, acknowledged:
    # 0.02 + 0.5 + 0.02 + 0.5 + 0.5 = 1.54 s), which ends long before stage 0 does.
    assert spans(sim, "stage 0") == [("F", 0, 0, 2), ("B", 0, 6.02, 10.02)]
    assert spans(sim, "stage 1") == [("F", 0, 2.518, 3.518), ("B", 0, 3.518, 5.518), ("AR", -1, 6.02, 7.56)]
    assert sim.minibatch_s == pytest.approx(10.02)
    assert estimate(cost, partition).minibatch_s == pytest.approx(10.02)
    # With a 100 times slower network the AllReduce of stage 1 outlasts stage 0's backward and ends the
    # mini-batch: the transfers take 0.5 + 1.8 and 0.5 + 0.2 s (F 0-2, 4.3-5.3, B 5.3-7.3, delivered at 8),
    # the AllReduce 2 + 0.5 + 2 + 0.5 + 0.5 = 5.5 s.
    home = tiny_home([[1.0, 100.0], [100.0, 1.0], [100.0, 1.0]], backward_fraction=2.0, latency_s=0.5,
                     bandwidth_bytes_per_s=10.0)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=2))
    sim = simulate_phase1(cost, partition)
    assert spans(sim, "stage 1") == [("F", 0, 4.3, 5.3), ("B", 0, 5.3, 7.3), ("AR", -1, 8.0, 13.5)]
    assert spans(sim, "stage 0") == [("F", 0, 0, 2), ("B", 0, 8.0, 12.0)]
    assert sim.minibatch_s == pytest.approx(13.5)
    assert estimate(cost, partition).minibatch_s == pytest.approx(13.5)


def ring_by_events(numel: int, world: int, itemsize: int, bandwidth: float, latency: float) -> float:
    """pac.collective's ring AllReduce played message by message (every rank, every bucket, every
    segment, with the runtime's own schedule functions): when the last rank is done."""
    from pac.collective.schedule import partition, ring_steps, segment_elements, segments

    bucket_elements = (32 * 1024 * 1024) // itemsize
    ready = [0.0] * world  # when rank r may start the next bucket
    done = 0.0
    offset = 0
    while offset < numel:
        size = min(bucket_elements, numel - offset)
        offset += size
        per = segment_elements(size, world, itemsize, 4 * 1024 * 1024 - 4096)
        chunks = partition(size, world)
        steps = [ring_steps(r, world) for r in range(world)]
        arrive: dict[tuple[int, int, int], float] = {}  # (receiving rank, step, segment) -> arrival
        free = list(ready)  # when rank r's link to rank r+1 is next free
        last_send = [0.0] * world
        # What each rank sends, in order: (step, segment, elements).
        plan = [[(t, k, b - a) for t in range(2 * (world - 1))
                 for k, (a, b) in enumerate(segments(*chunks[steps[r][t].send_chunk], per))]
                for r in range(world)]
        left = sum(len(p) for p in plan)
        order = [0] * world  # position in its plan of each rank's next message
        while left:
            for r in range(world):
                while order[r] < len(plan[r]):
                    t, k, count = plan[r][order[r]]
                    need = 0.0 if t == 0 else arrive.get((r, t - 1, k))
                    if need is None:
                        break
                    start = max(free[r], need)
                    free[r] = last_send[r] = start + count * itemsize / bandwidth
                    arrive[((r + 1) % world, t, k)] = free[r] + latency
                    order[r] += 1
                    left -= 1
        for r in range(world):
            last_recv = max(v for (q, _, _), v in arrive.items() if q == r)
            ready[r] = max(last_send[r], last_recv)
            done = max(done, ready[r], last_send[r] + 2 * latency)  # the next rank acknowledges the last data
    return done


@pytest.mark.parametrize("world", [2, 3, 5, 8])
@pytest.mark.parametrize("numel,latency", [(20, 0.002), (300_000, 0.002), (8_000_000, 0.002),
                                           (8_000_000, 0.05), (20_000_000, 0.002)])
def test_allreduce_cost_matches_the_runtime_ring_message_by_message(world: int, numel: int, latency: float) -> None:
    home = tiny_home([[1.0]] * world, latency_s=latency, bandwidth_bytes_per_s=125e6)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=world))
    expected = ring_by_events(numel - numel % world, world, 4, 125e6, latency)
    assert cost.allreduce(tuple(range(world)), 4.0 * (numel - numel % world)) == pytest.approx(expected, rel=1e-6)


def test_ring_constants_are_the_runtimes() -> None:
    from pac.collective import bucket, group, schedule
    from pac.planner import cost

    assert cost.RING_BUCKET_BYTES == bucket.DEFAULT_BUCKET_BYTES == group.RingGroup("g", 0, ("a",)).bucket_bytes
    assert cost.RING_MAX_SEGMENT_BYTES == group.MAX_SEGMENT_BYTES
    assert cost.RING_MIN_SEGMENT_BYTES == schedule.MIN_SEGMENT_BYTES
    assert cost.RING_SEGMENTS_PER_STEP == schedule.SEGMENTS_PER_STEP


def test_stage_gradients_are_its_side_parameters_in_fp32() -> None:
    from pac.planner.synthetic import synthetic_home

    home = synthetic_home(6, 2, seed=0)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=2))
    model = home.model
    assert cost.stage_gradient_bytes(2, 4) == 4 * sum(model.side_layer_params[2:4])
    assert cost.stage_gradient_bytes(0, 6) == 4 * model.side_params
    assert sum(cost.stage_gradient_bytes(x, y) for x, y in ((0, 2), (2, 5), (5, 6))) == 4 * model.side_params


def test_transfers_serialise_per_sender_and_receiver() -> None:
    home = tiny_home([[1.0], [1.0], [1.0]], latency_s=0.0, bandwidth_bytes_per_s=100.0)
    cost = CostModel(home, TrainingJob(samples=8, batch_size=2))
    finish, events = simulate_transfers(cost, [(0, 1, 100.0), (0, 2, 100.0), (1, 2, 100.0)])
    assert [(e.start, e.end) for e in events] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    assert finish == 3.0


# ---- running ahead -------------------------------------------------------------------------------------

def ahead_spans(events, resource: str) -> list[tuple[str, int, float, float]]:
    return [(e.kind, e.micro_batch, e.start, e.end) for e in events if e.resource == resource]


def test_run_ahead_timeline_by_hand() -> None:
    """Two stages, two micro-batches, window 1, two mini-batches. Stage 0: A (frozen forward) 2, F 1, B 1,
    AllReduce 0.5, hidden states 1 s and side states 0.5 s to stage 1, gradients 0.5 s back; stage 1: A, F,
    B 1 each. Worked out by hand: while stage 0 waits for B0's gradient (6 to 6.5) it starts mini-batch 1's
    first frozen forward (6 to 8), which B0 then waits for (training first, nothing pre-empted); mini-batch
    1 starts when 0's AllReduce ends (12.5) and finds every frozen forward done on stage 0."""
    stage0 = AheadStage(frozen_s=2, forward_s=1, backward_s=1, allreduce_s=0.5, hidden_s=1, side_s=0.5,
                        gradient_s=0.5)
    stage1 = AheadStage(frozen_s=1, forward_s=1, backward_s=1)
    finish, events, waiting = ahead_timeline([stage0, stage1], micro_batches=2, window=1, minibatches=2)
    assert finish == [12.5, 20.0]
    assert ahead_spans(events, "stage 0") == [
        ("A", 0, 0, 2), ("F", 0, 2, 3), ("A", 1, 3, 5), ("F", 1, 5, 6), ("A", 0, 6, 8), ("B", 0, 8, 9),
        ("A", 1, 9, 11), ("B", 1, 11, 12), ("AR", -1, 12, 12.5),  # mini-batch 0; then 1, all frozen done
        ("F", 0, 12.5, 13.5), ("F", 1, 13.5, 14.5), ("B", 0, 16.5, 17.5), ("B", 1, 18.5, 19.5), ("AR", -1, 19.5, 20)]
    assert ahead_spans(events, "stage 1") == [
        ("A", 0, 3, 4), ("F", 0, 4, 5), ("B", 0, 5, 6), ("A", 1, 6, 7), ("F", 1, 7, 8), ("B", 1, 8, 9),
        ("A", 0, 9, 10), ("A", 1, 12, 13), ("F", 0, 14, 15), ("B", 0, 15, 16), ("F", 1, 16, 17), ("B", 1, 17, 18)]
    assert ahead_spans(events, "link 0->1") == [("send", 0, 2, 3), ("send", 1, 5, 6), ("send", 0, 8, 9),
                                                ("send", 1, 11, 12)]
    assert waiting == [2, 2]  # mini-batch 1's two frozen forwards wait on each stage
    # Lock-step (each F runs its frozen layers, hidden and side states travel together): 12.5 s a mini-batch.
    assert 2 * 12.5 > finish[-1]


def test_run_ahead_streams_a_stage_that_trains_nothing() -> None:
    """Stage 0 has only frozen layers (A 2, nothing to train): it streams every mini-batch's frozen forwards,
    window 1 ahead, and the pipeline's pace becomes the busier stage 1's 3 s per micro-batch (6 per
    mini-batch) instead of lock-step's 8."""
    finish, _, waiting = ahead_timeline([AheadStage(2, 0, 0), AheadStage(1, 1, 1)], 2, window=1, minibatches=3)
    assert finish == [8.0, 14.0, 20.0]
    assert waiting == [2, 1]


def test_an_allreduce_that_takes_the_compute_is_not_overlapped() -> None:
    """One stage (A 3, F 1, B 2, AllReduce 1, then 0.5 s of optimiser and round trip), window 1. Where the
    ring's work has a core of its own, A(k+1) runs beside mini-batch k's AllReduce and gap: 6 s a
    mini-batch after the first (7.5). On a machine with no core to spare it waits for the AllReduce:
    A(1) from 7 to 10, F(1) 10-11, B(1) 11-13, AllReduce 13-14, +0.5: 7 s, what lock-step takes."""
    free, _, _ = ahead_timeline([AheadStage(3, 1, 2, 1.0)], 1, window=1, minibatches=3, gap_s=0.5)
    busy, events, _ = ahead_timeline([AheadStage(3, 1, 2, 1.0, allreduce_computes=True)], 1, window=1,
                                     minibatches=3, gap_s=0.5)
    assert free == [7.5, 13.5, 19.5]
    assert busy == [7.5, 14.5, 21.5]
    assert [(e.kind, e.start, e.end) for e in events if e.kind == "A"] == [("A", 0.0, 3.0), ("A", 7.0, 10.0),
                                                                          ("A", 14.0, 17.0)]


def test_devices_whose_threads_take_every_core_of_their_machine_are_busy() -> None:
    from pac.planner.ahead import busy_hosts

    cost, _ = pipeline([1.0, 1.0], micro=1, latency=0.01)
    devices = [dataclasses.replace(d, host="box", host_cores=2, threads=1) for d in cost.home.devices]
    cost = CostModel(dataclasses.replace(cost.home, devices=tuple(devices)), cost.job)
    assert busy_hosts(cost, [0]) == set()  # one thread of two cores: one spare
    assert busy_hosts(cost, [0, 1]) == {"box"}


def test_simulated_run_ahead_holds_its_window_in_memory() -> None:
    cost, partition = pipeline([1.0, 3.0], micro=2, latency=0.01)
    lock = simulate_phase1(cost, partition)
    ahead = simulate_ahead(cost, partition, 1)
    assert ahead.run_ahead == 1 and ahead.first_minibatch_s is not None
    assert ahead.minibatch_s < lock.minibatch_s
    assert all(ahead.peak_memory_bytes[name] > used for name, used in lock.peak_memory_bytes.items())
    assert ahead.epoch_s(5) == pytest.approx(ahead.first_minibatch_s + 4 * ahead.minibatch_s)


def test_the_planner_runs_ahead_within_the_jobs_window() -> None:
    from pac.planner.planner import plan_job
    from pac.planner.synthetic import synthetic_home

    home = synthetic_home(24, 4, seed=0, latency_s=0.002)
    job = TrainingJob(samples=256, batch_size=4, epochs=2)
    ahead = plan_job(home, job).plan
    lock = plan_job(home, dataclasses.replace(job, run_ahead=0)).plan
    assert ahead.phase1.run_ahead in (1, 2) and lock.phase1.run_ahead == 0
    assert ahead.phase1.epoch_s < lock.phase1.epoch_s
    assert "ahead" in ahead.reason and "lock-step" in lock.reason


def test_measured_fixed_costs_enter_the_simulation() -> None:
    """A call's own time lengthens every forward and backward, the optimiser step separates mini-batches,
    and the AllReduce probe's time beyond its links is charged per ring step."""
    cost, partition = pipeline([1.0, 3.0], micro=2, latency=0.5)
    plain = simulate_phase1(cost, partition).minibatch_s
    devices = tuple(dataclasses.replace(d, call_s=0.25, optimizer_s_per_param=0.01) for d in cost.home.devices)
    home = dataclasses.replace(cost.home, devices=devices)
    charged = CostModel(home, cost.job)
    assert charged.stage_times((0,), 1, 0, 1) == pytest.approx((1.25, 1.25))
    assert charged.optimizer_s((1,), 1, 2) == pytest.approx(0.01 * 10)  # its side block's 10 parameters
    # 1F1B by hand as in test_two_stages_with_transfers_by_hand, every op 0.25 s longer: 2 F + 2 B on the
    # critical path of stage 1 and the first forward and last backward of stage 0 (6 ops), then AdamW.
    assert simulate_phase1(charged, partition).minibatch_s == pytest.approx(plain + 6 * 0.25 + 0.1)
    probed = CostModel(dataclasses.replace(home, allreduce_probe=(("d0", "d1"), 1024.0, 2.0)), cost.job)
    links_only = CostModel(home, cost.job).allreduce((0, 1), 1024.0)
    assert probed.ring_step_s == pytest.approx((2.0 - links_only) / 2)  # two ranks: two ring steps
    assert probed.allreduce((0, 1), 1024.0) == pytest.approx(2.0)
    from pac.planner.profile import home_from_dict

    again = home_from_dict(json.loads(json.dumps(probed.home.to_dict())))
    assert again.allreduce_probe == (("d0", "d1"), 1024.0, 2.0) and again.devices[0].call_s == 0.25


def test_phase2_side_time_per_sample_grows_at_small_shares_as_measured() -> None:
    """A device whose side backward takes 2 s at 1 sample and 17 s at 16 (a fixed part): at 4 samples a
    sample costs 5/4 s against 17/16 at the profile's largest batch, so phase 2 charges 1.18x the side
    network's time per sample there, and nothing more at 16."""
    from pac.planner.profile import DeviceProfile, HomeProfile, LinkProfile, ModelProfile

    model = ModelProfile(name="m", hidden_size=8, side_size=1, seq_len=1, layer_params=(10,),
                         side_layer_params=(10,), activation_bytes_per_sample=(1.0,))
    device = DeviceProfile(name="d", memory_budget_bytes=1 << 30, disk_budget_bytes=1 << 30, batch_sizes=(1, 16),
                           forward_s=((1.0, 16.0),), backward_s=((2.0, 17.0),), side_sample_s=1.0)
    cost = CostModel(HomeProfile(model, (device,), default_link=LinkProfile("*", "**", 1e9, 0.0)),
                     TrainingJob(samples=16, batch_size=16))
    assert cost.side_scale(0, 4) == pytest.approx((5 / 4) / (17 / 16))
    assert cost.side_scale(0, 16) == pytest.approx(1.0)
    assert cost.phase2_sample_s(0, 4) == pytest.approx(cost.phase2_sample_s(0) * (5 / 4) / (17 / 16))
