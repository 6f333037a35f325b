"""plan_job end to end on synthetic homes: budgets, determinism, JSON, phase 2, errors, profile files."""

from __future__ import annotations

import json

import pytest

from pac.planner.cost import CostModel
from pac.planner.errors import InfeasibleError, ProfileError
from pac.planner.phase1 import Partition
from pac.planner.phase2 import plan_phase2
from pac.planner.plan import Plan
from pac.planner.planner import plan_job
from pac.planner.profile import home_from_dict, interpolate, load_home
from pac.planner.synthetic import synthetic_home, tiny_home
from pac.planner.workload import TrainingJob


@pytest.mark.parametrize("layers,devices,seed", [(12, 3, 0), (24, 4, 1), (24, 6, 2)])
@pytest.mark.parametrize("strategy", ["pac", "pipeline-only", "single-device"])
def test_budgets_are_never_exceeded(layers: int, devices: int, seed: int, strategy: str) -> None:
    home = synthetic_home(layers, devices, seed=seed)
    job = TrainingJob(samples=256, batch_size=8, epochs=3)
    try:
        plan = plan_job(home, job, strategy).plan
    except InfeasibleError:
        return
    for use in plan.usage:
        assert use.phase1_peak_bytes <= use.memory_budget_bytes
        assert use.phase2_peak_bytes <= use.memory_budget_bytes
        assert use.disk_bytes <= use.disk_budget_bytes
    layers_covered = [(s.first_layer, s.end_layer) for s in plan.phase1.stages]
    assert layers_covered[0][0] == 0 and layers_covered[-1][1] == layers
    assert all(a[1] == b[0] for a, b in zip(layers_covered, layers_covered[1:], strict=False))


def test_same_input_same_plan() -> None:
    job = TrainingJob(samples=300, batch_size=8, epochs=2)
    first = plan_job(synthetic_home(24, 5, seed=3), job).plan.to_json()
    second = plan_job(synthetic_home(24, 5, seed=3), job).plan.to_json()
    assert first == second


def test_plan_json_round_trip(tmp_path) -> None:
    plan = plan_job(synthetic_home(12, 3, seed=4), TrainingJob(samples=100, batch_size=4)).plan
    path = tmp_path / "plan.json"
    plan.save(path)
    again = Plan.load(path)
    assert again == plan
    assert json.loads(path.read_text())["version"] == 1


def test_pac_is_no_slower_than_its_baselines() -> None:
    home = synthetic_home(24, 4, seed=5)
    job = TrainingJob(samples=256, batch_size=8)
    ours = plan_job(home, job).plan.phase1.minibatch_s
    for strategy in ("pipeline-only", "single-device"):
        try:
            other = plan_job(home, job, strategy).plan.phase1.minibatch_s
        except InfeasibleError:
            continue
        assert ours <= other + 1e-9


def test_infeasible_job_says_what_would_fit() -> None:
    # 4 layers of 1000 params: 8000 bytes at 16-bit, 4000 at 8-bit; two devices of 3000 bytes each.
    home = tiny_home([[1.0] * 4, [1.0] * 4], [3_000, 3_000])
    with pytest.raises(InfeasibleError, match="--weight-bits 8"):
        plan_job(home, TrainingJob(samples=8, batch_size=2))
    with pytest.raises(InfeasibleError, match="add devices"):
        plan_job(tiny_home([[1.0] * 4], [100]), TrainingJob(samples=8, batch_size=2))


def test_an_unquantised_backbone_is_planned_at_its_fp32_size() -> None:
    # 4 layers of 1000 params: 16000 bytes in fp32 (what the runtime holds for quantization "none"),
    # 8000 in 16 bits; two devices of 6000 bytes each hold the 16-bit backbone, not the fp32 one.
    from pac.formats import WEIGHT_BITS

    home = tiny_home([[1.0] * 4, [1.0] * 4], [6_000, 6_000])
    assert WEIGHT_BITS["none"] == 32 and WEIGHT_BITS["bf16"] == 16
    plan_job(home, TrainingJob(samples=8, batch_size=2, weight_bits=16))
    with pytest.raises(InfeasibleError, match="--weight-bits 16 .*'bf16'"):
        plan_job(home, TrainingJob(samples=8, batch_size=2, weight_bits=32))


def test_phase2_shares_follow_side_speed_and_keep_cache_local() -> None:
    # Two equal devices in one data-parallel stage: phase 2 splits the same way, so no cache moves.
    home = tiny_home([[1.0, 1.0], [1.0, 1.0]])
    cost = CostModel(home, TrainingJob(samples=10, batch_size=2))
    partition = Partition(((0, 2, (0, 1)),), 1, 2, 3.0)
    assignment = plan_phase2(cost, partition)
    assert assignment.epoch_samples == (5, 5)
    assert [m for m in assignment.moves if m[3] == "cache"] == []
    # A pipeline: every device must fetch the other stage's layers for its own samples.
    partition = Partition(((0, 1, (0,)), (1, 2, (1,))), 1, 2, 3.0)
    assignment = plan_phase2(cost, partition)
    cache = {(a, b): n for a, b, n, what in assignment.moves if what == "cache"}
    per_layer = 8 * 2  # seq 1 x hidden 8 x 2 bytes
    assert cache == {(0, 1): 5 * 2 * per_layer, (1, 0): 5 * 1 * per_layer}  # stage 0 also holds h_0


def test_phase2_faster_device_trains_more() -> None:
    home = tiny_home([[1.0], [1.0]])
    fast = home.devices[0].__class__(**{**home.devices[0].__dict__, "side_sample_s": 0.005})
    home = home.__class__(home.model, (fast, home.devices[1]), default_link=home.default_link)
    cost = CostModel(home, TrainingJob(samples=30, batch_size=3))
    assignment = plan_phase2(cost, Partition(((0, 1, (0, 1)),), 1, 3, 1.0))
    assert assignment.epoch_samples == (20, 10)


def test_interpolation_between_and_beyond_measurements() -> None:
    assert interpolate([1, 4], [1.0, 4.0], 2) == pytest.approx(2.0)
    assert interpolate([2, 4], [2.0, 3.0], 8) == pytest.approx(5.0)
    assert interpolate([4], [2.0], 2) == pytest.approx(1.0)
    assert interpolate([1, 2], [1.0, 1.5], 0) == 0.0


def test_profile_file_round_trip_and_errors(tmp_path) -> None:
    home = synthetic_home(4, 2, seed=6)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(home.to_dict()))
    assert load_home(path) == home
    data = home.to_dict()
    data["devices"][1]["forward_s"] = data["devices"][1]["forward_s"][:3]
    with pytest.raises(ProfileError, match="backward_s: has 4 layers but forward_s has 3"):
        home_from_dict(data)
    data = home.to_dict()
    del data["default_link"]
    with pytest.raises(ProfileError, match="no link for 1 device pairs"):
        home_from_dict(data)
    data = home.to_dict()
    data["devices"][0]["memory_budget_bytes"] = -1
    with pytest.raises(ProfileError, match="memory_budget_bytes"):
        home_from_dict(data)
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        load_home(path)


def test_synthetic_times_grow_with_the_batch_as_measured() -> None:
    from pac.planner.synthetic import BATCH_SCALING, MEASURED_BATCHES, NANO, device_for, transformer_model

    model = transformer_model(2)
    device = device_for(model, NANO, "nano")
    assert device.batch_sizes == MEASURED_BATCHES
    for shape in BATCH_SCALING.values():
        assert len(shape) == len(MEASURED_BATCHES) and shape[0] == 1.0
        assert all(a < b for a, b in zip(shape, shape[1:], strict=False))
    backward = device.backward_s[0]
    assert [b / backward[0] for b in backward] == pytest.approx(BATCH_SCALING["side_backward"])
    # Forward is backbone + side block: its growth lies between theirs, dominated by the backbone.
    forward = [f / device.forward_s[0][0] for f in device.forward_s[0]]
    for ratio, a, b in zip(forward, BATCH_SCALING["backbone_forward"], BATCH_SCALING["side_forward"], strict=True):
        assert min(a, b) - 1e-9 <= ratio <= max(a, b) + 1e-9
        assert abs(ratio - a) < abs(ratio - b) or a == b
    # Batch 1 is FLOPs over the device's rate at 1.5 sample-equivalents, plus the per-call overhead.
    flops = 2.0 * (model.layer_params[0] + model.side_layer_params[0]) * model.seq_len
    assert device.forward_s[0][0] == pytest.approx(NANO.overhead_s + 1.5 * flops / (NANO.tflops * 1e12))


def test_chosen_plan_is_the_fastest_simulated_of_the_shortlist() -> None:
    from pac.planner.baselines import candidates
    from pac.planner.planner import SIMULATED_CANDIDATES
    from pac.planner.simulator import simulate_phase1

    home = synthetic_home(24, 4, seed=0)
    job = TrainingJob(samples=256, batch_size=32)
    cost = CostModel(home, job)
    shortlist = candidates(cost, "pac")[:SIMULATED_CANDIDATES]
    assert len(shortlist) == SIMULATED_CANDIDATES
    best = min(simulate_phase1(cost, p).minibatch_s for p in shortlist)
    assert plan_job(home, job).plan.phase1.minibatch_s <= best + 1e-12


@pytest.mark.parametrize("layers,devices,seed,batch", [(24, 4, 0, 32), (24, 8, 1, 8), (48, 6, 2, 12)])
def test_pac_never_loses_to_the_simulated_baselines(layers: int, devices: int, seed: int, batch: int) -> None:
    home = synthetic_home(layers, devices, seed=seed)
    job = TrainingJob(samples=256, batch_size=batch)
    ours = plan_job(home, job).plan.phase1.minibatch_s
    for strategy in ("pipeline-only", "data-only"):
        try:
            other = plan_job(home, job, strategy).plan.phase1.minibatch_s
        except InfeasibleError:
            continue
        assert ours <= other + 1e-12


def test_a_single_device_home_needs_no_links():
    from pac.planner.profile import home_from_dict

    document = {
        "version": 1,
        "model": {"name": "m", "hidden_size": 8, "side_size": 1, "seq_len": 4, "layer_params": [10, 10],
                  "side_layer_params": [1, 1], "activation_bytes_per_sample": [1.0, 1.0]},
        "devices": [{"name": "solo", "memory_budget_bytes": 1 << 30, "disk_budget_bytes": 1 << 30,
                     "batch_sizes": [1], "forward_s": [[0.1], [0.1]], "backward_s": [[0.05], [0.05]],
                     "side_sample_s": 0.01}],
        "links": [],
    }
    assert len(home_from_dict(document).devices) == 1


def _on_one_machine(home, cores: int, threads: int = 1):
    """Every device of `home` on one machine with `cores` cores, each using `threads` threads."""
    devices = tuple(d.__class__(**{**d.__dict__, "host": "box", "host_cores": cores, "threads": threads})
                    for d in home.devices)
    return home.__class__(home.model, devices, default_link=home.default_link)


def test_host_contention_counts_threads_against_cores() -> None:
    from pac.planner.profile import host_contention

    home = _on_one_machine(tiny_home([[1.0]] * 4), cores=2)
    assert host_contention(home.devices, range(4)) == {i: 2.0 for i in range(4)}
    assert host_contention(home.devices, [0, 3]) == {0: 1.0, 3: 1.0}
    assert host_contention(tiny_home([[1.0]] * 4).devices, range(4)) == {i: 1.0 for i in range(4)}  # no host


def test_phase2_uses_only_the_devices_a_shared_machine_runs_at_full_speed() -> None:
    # A latency-bound AllReduce makes each extra device cost more than nothing.
    apart = tiny_home([[1.0]] * 4, latency_s=1e-3)
    cost = CostModel(apart, TrainingJob(samples=64, batch_size=16))
    partition = Partition(((0, 1, (0, 1, 2, 3)),), 1, 16, 1.0)
    assert plan_phase2(cost, partition).epoch_samples == (16, 16, 16, 16)  # four machines: all train
    shared = _on_one_machine(apart, cores=2)
    assignment = plan_phase2(CostModel(shared, TrainingJob(samples=64, batch_size=16)), partition)
    assert sorted(assignment.epoch_samples) == [0, 0, 32, 32]  # two cores: two devices do the same work
    moved = sum(n for _, _, n, what in assignment.moves if what == "cache")
    assert moved > 0  # the idle devices' cached states move to the two that train


def test_a_shared_machine_is_planned_with_the_devices_its_cores_run() -> None:
    home = _on_one_machine(tiny_home([[1.0] * 4] * 4, latency_s=1e-3), cores=2)
    job = TrainingJob(samples=64, batch_size=16, epochs=3)
    plan = plan_job(home, job).plan
    assert len(plan.devices) == 2 and "share its cores" in plan.reason
    assert sum(len(s.devices) for s in plan.phase1.stages) <= 2
    # every device, slowed by sharing, is what the baselines plan: never faster than ours
    assert plan_job(home, job, "data-only").plan.total_s >= plan.total_s
    # the same devices on machines of their own: every device takes part
    assert len(plan_job(tiny_home([[1.0] * 4] * 4, latency_s=1e-3), job).plan.phase1.stages[0].devices) == 4


def test_profile_host_fields_round_trip() -> None:
    home = _on_one_machine(tiny_home([[1.0]] * 2), cores=8, threads=4)
    again = home_from_dict(json.loads(json.dumps(home.to_dict())))
    assert [(d.host, d.host_cores, d.threads) for d in again.devices] == [("box", 8, 4)] * 2
    assert "host" not in tiny_home([[1.0]]).to_dict()["devices"][0]
    with pytest.raises(ProfileError, match="host_cores"):
        home_from_dict({**home.to_dict(), "devices": [{**home.to_dict()["devices"][0], "host_cores": -1}]})


def test_phase2_cache_fits_beside_the_phase1_shard() -> None:
    # Two devices in one data-parallel stage, 10 samples: each caches 5 samples x 3 states (h_0..h_2)
    # of 16 bytes in phase 1 = 240 bytes, and a phase-2 record is 3 states = 48 bytes a sample.
    job = TrainingJob(samples=10, batch_size=2, epochs=2)
    partition = Partition(((0, 2, (0, 1)),), 1, 2, 3.0)
    roomy = tiny_home([[1.0, 1.0], [1.0, 1.0]], disk_budget_bytes=1000)
    assert plan_phase2(CostModel(roomy, job), partition).epoch_samples == (5, 5)
    # device 1 has room for its shard but not for a phase-2 cache beside it: device 0 trains alone
    tight = tiny_home([[1.0, 1.0], [1.0, 1.0]], disk_budget_bytes=1000)
    small = tight.devices[1].__class__(**{**tight.devices[1].__dict__, "disk_budget_bytes": 260})
    tight = tight.__class__(tight.model, (tight.devices[0], small), default_link=tight.default_link)
    assignment = plan_phase2(CostModel(tight, job), partition)
    assert assignment.epoch_samples == (10, 0)
    plan = plan_job(tight, job).plan
    assert all(use.disk_bytes <= use.disk_budget_bytes for use in plan.usage)


def test_a_plan_says_how_another_job_differs_from_the_one_it_was_made_for() -> None:
    plan = plan_job(synthetic_home(12, 3, seed=4), TrainingJob(samples=100, batch_size=4, epochs=3)).plan
    assert plan.job.seq_len == synthetic_home(12, 3, seed=4).model.seq_len  # what its times were costed at
    assert plan.differences(TrainingJob(samples=100, batch_size=4, epochs=3)) == ([], [])
    made = plan.job.seq_len
    unusable, estimates = plan.differences(TrainingJob(samples=64, batch_size=8, epochs=2, seq_len=made // 2,
                                                       weight_bits=8))
    assert unusable == ["batch_size 4 (the job: 8)"]
    assert estimates == ["16-bit weights (the job: 8)", f"seq_len {made} (the job: {made // 2})",
                         "samples 100 (the job: 64)", "epochs 3 (the job: 2)"]
    # more memory per sample or per weight than the plan was fitted with: refused
    unusable, _ = plan.differences(TrainingJob(samples=100, batch_size=4, epochs=3, seq_len=made * 2, weight_bits=32))
    assert unusable == ["16-bit weights (the job: 32)",
                        f"seq_len {made} (the job: {made * 2}; profile at the job's: pacctl profile --seq-len {made * 2})"]
    assert Plan.from_dict(plan.to_dict()) == plan


def test_times_are_costed_at_the_length_the_jobs_batches_pad_to() -> None:
    """A mini-batch pads to its longest sample, not to seq_len: the layers are timed as that fraction of
    the profile's samples (interpolated along its batch sizes), the memory fit stays at seq_len."""
    import dataclasses

    home = synthetic_home(12, 3, seed=4)
    full = TrainingJob(samples=256, batch_size=8, seq_len=128)
    short = dataclasses.replace(full, padded_tokens=64.0)
    assert short.token_fraction == 0.5 and full.token_fraction == 1.0
    assert dataclasses.replace(full, padded_tokens=500.0).token_fraction == 1.0
    long_plan, short_plan = plan_job(home, full).plan, plan_job(home, short).plan
    assert short_plan.phase1.minibatch_s < 0.8 * long_plan.phase1.minibatch_s
    cost_full, cost_short = CostModel(home, full), CostModel(home, short)
    forward_full, _ = cost_full.layer_times(0, 8)
    forward_short, _ = cost_short.layer_times(0, 8)
    assert (forward_short < forward_full).all()
    assert cost_short.stage_memory(0, 8, 0, 12, 1).total == cost_full.stage_memory(0, 8, 0, 12, 1).total


def test_padded_tokens_follow_the_seeded_mini_batches() -> None:
    from pac.cluster.prepare import padded_tokens
    from pac.data.batching import Encoded

    items = [Encoded(tuple(range(n)), 0) for n in (2, 4, 6, 8)]
    assert padded_tokens(items, 4, 0) == 8.0  # one mini-batch: every sample pads to 8
    assert padded_tokens(items, 1, 0) == 5.0  # each alone: the mean length


def test_the_controller_memory_is_counted_and_its_budget_kept():
    """The controller holds no backbone: the plan records its peak (side network, heads, tuned layers, an
    evaluation batch, its process); a budget below that is refused with what it holds."""
    import dataclasses

    from pac.planner.errors import InfeasibleError
    from pac.planner.memory import controller_memory
    from pac.planner.planner import plan_job
    from pac.planner.synthetic import synthetic_home
    from pac.planner.workload import TrainingJob
    from pacctl.commands.plan import render

    home = synthetic_home(24, 4, seed=0)
    job = TrainingJob(samples=64, batch_size=8, epochs=2, top_layers=2, controller_overhead_bytes=300 << 20)
    use = controller_memory(home.model, job)
    assert use.weights >= 4 * sum(home.model.layer_params[-2:]) and use.overhead == 300 << 20
    assert use.weights + use.side_state < sum(home.model.layer_params) * 2  # the backbone's weights: far more
    plan = plan_job(home, dataclasses.replace(job, controller_budget_bytes=int(use.total) + 1)).plan
    assert plan.controller_bytes == pytest.approx(use.total)
    text = render(plan)
    assert "where the model is held" in text and "the controller holds no other layer" in text
    with pytest.raises(InfeasibleError, match=r"the controller needs .* GiB .*controller.memory_budget"):
        plan_job(home, dataclasses.replace(job, controller_budget_bytes=int(use.total) - 1))
