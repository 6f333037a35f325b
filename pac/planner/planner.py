"""Plan a job: phase 1 (search + simulation of the best candidates), phase 2, and the explanation.

`plan_job` is the one entry point the CLI and the benchmark use. Pure: no I/O, deterministic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pac.planner.ahead import ahead_bound, ahead_stages, simulate_ahead
from pac.planner.baselines import RUNS_AHEAD, STRATEGIES, candidates
from pac.planner.cost import CostModel
from pac.planner.errors import InfeasibleError
from pac.planner.memory import cache_bytes_per_sample, controller_memory, phase2_memory
from pac.planner.phase1 import Partition, estimate, one_f_one_b_time
from pac.planner.phase2 import Phase2Assignment, phase1_disk, plan_phase2
from pac.planner.plan import DeviceUse, Move, Phase1Plan, Phase2Plan, Plan, StagePlan
from pac.planner.profile import HomeProfile, shared_host_views
from pac.planner.simulator import (
    Phase1Simulation,
    simulate_phase1,
    simulate_phase2_epoch,
    simulate_transfers,
)
from pac.planner.workload import TrainingJob

# The best candidates by the Eq. 4-6 estimate that are simulated to pick one. The estimate misranks close
# candidates (it cannot see transfers queueing behind each other): on benchmark homes (24 and 96 layers,
# 4-16 devices, mini-batch = devices and 32) the best 6 missed the fastest simulated candidate by up to
# 8%, the best 24 by at most 0.5%. A simulation costs about a millisecond of CPU.
SIMULATED_CANDIDATES = 24
GIB = float(1 << 30)


@dataclass(frozen=True)
class PlanResult:
    """The chosen plan, the runner-up it beat, and what the search looked at."""

    plan: Plan
    runner_up: Plan | None
    candidates: int  # DP-optimal partitions considered
    partition: Partition  # the chosen phase-1 partition, by device index
    simulation: Phase1Simulation  # its simulated mini-batch (events for the Gantt chart)


QUANTIZATION_OF_BITS = {16: "bf16", 8: "int8", 4: "int4"}  # the job file's names (pac.formats.WEIGHT_BITS)


def plan_job(home: HomeProfile, job: TrainingJob, strategy: str = "pac") -> PlanResult:
    """The best plan of `strategy` for `job` on `home`; InfeasibleError says what would make it fit.

    Where devices of one machine share its cores, `pac` plans two views of the home
    (`profile.shared_host_views`: all devices slowed by sharing, or fewer devices at full speed) and keeps
    the plan with the least total time; the baselines use every device."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    check_controller(home, job)
    views = shared_host_views(home)
    results = [r for r in (_plan_view(view, job, strategy) for view in views[:1 if strategy != "pac" else None])
               if r is not None]
    if not results:
        raise InfeasibleError(explain_infeasible(home, job, strategy))
    best = min(results, key=lambda r: r.plan.total_s)  # the first (every device) on a tie
    if len(results) > 1 and best is not results[0]:
        other = results[0].plan
        note = (f" Devices of one machine share its cores: {len(best.plan.devices)} of {len(home.devices)} "
                f"devices take part ({best.plan.total_s:.1f} s in all, against {other.total_s:.1f} s with every "
                f"device slowed by sharing).")
        best = dataclasses.replace(best, plan=dataclasses.replace(best.plan, reason=best.plan.reason + note))
    return best


def _plan_view(home: HomeProfile, job: TrainingJob, strategy: str) -> PlanResult | None:
    cost = CostModel(home, job)
    found = candidates(cost, strategy)
    if not found:
        return None
    shortlist = found[:SIMULATED_CANDIDATES]
    if strategy == "pac":
        # The baselines' plans are in our search space; simulating their shortlists too (one candidate per
        # micro-batch count each) guarantees that the plan chosen is never slower than theirs, even where
        # the estimate ranks them wrongly.
        pipelines = candidates(cost, "pipeline-only")[:SIMULATED_CANDIDATES]
        baselines = pipelines + candidates(cost, "data-only")[:SIMULATED_CANDIDATES]
        shortlist += [p for p in baselines if p not in shortlist]
    simulated = [(simulate_phase1(cost, p), i, p) for i, p in enumerate(shortlist)]
    if strategy in RUNS_AHEAD and cost.model.technique == "pac":
        # Running ahead: the candidates it would speed up most, by a bound, are simulated that way too;
        # with PAC also those pipeline-ahead would simulate, so its plan is never slower than that one.
        estimates = [_ahead_estimate(cost, p) for p in shortlist]
        # (many share the bound, their busiest stage's: the faster in lock-step first)
        hopeful = sorted(range(len(shortlist)), key=lambda i: (round(estimates[i], 3), simulated[i][0].minibatch_s, i))
        chosen = hopeful[:RUN_AHEAD_SIMULATED]
        if strategy == "pac":
            chosen += [i for i in hopeful if shortlist[i] in pipelines][:RUN_AHEAD_SIMULATED // 2]
        best_epoch = min(_epoch1(cost, t[0]) for t in simulated)
        for i in sorted(set(chosen), key=hopeful.index):
            if estimates[i] * cost.job.minibatches_per_epoch >= best_epoch:
                continue  # its bound already loses to a simulated plan
            simulated[i] = (_run_ahead(cost, shortlist[i], simulated[i][0]), i, shortlist[i])
            best_epoch = min(best_epoch, _epoch1(cost, simulated[i][0]))
    simulated.sort(key=lambda t: (_epoch1(cost, t[0]), t[1]))
    sim, _, best = simulated[0]
    # The runner-up is the best plan of a different shape (stage count, group sizes, micro-batches):
    # swapping two alike devices is not an alternative worth explaining.
    others = [t for t in simulated if _shape(t[2]) != _shape(best)]
    seen = {_shape(t[2]) for t in simulated}
    for i, p in enumerate(found[SIMULATED_CANDIDATES:], start=len(shortlist)):
        if _shape(p) not in seen:
            others.append((simulate_phase1(cost, p), i, p))
            break
    runner = min(others, key=lambda t: (_epoch1(cost, t[0]), t[1])) if others else None
    use_cache = strategy == "pac" and job.epochs > 1
    runner_plan = _build(cost, runner[2], runner[0], strategy, use_cache, "") if runner else None
    if sim.run_ahead:  # its events, for the Gantt chart
        sim = simulate_ahead(cost, best, sim.run_ahead)
    plan = _build(cost, best, sim, strategy, use_cache, "")
    plan = dataclasses.replace(plan, reason=_reason(cost, plan, runner_plan, len(found)))
    return PlanResult(plan, runner_plan, len(found), best, sim)


# The widest window tried (the job's run_ahead may narrow it). Wider is not always faster: a frozen forward
# far ahead can hold the compute when a training operation becomes ready (nothing is pre-empted).
RUN_AHEAD_MAX = 2
# Shortlisted candidates also simulated running ahead, those with the lowest `_ahead_estimate`: a
# run-ahead simulation plays several mini-batches, so not all 24-72 are. On five benchmark homes (24-96
# layers, 4-16 devices) the best 12 held the plan that simulating all of them found; the best 8 missed it by
# up to 6% (a one-off comparison).
RUN_AHEAD_SIMULATED = 12


def _ahead_estimate(cost: CostModel, partition: Partition) -> float:
    """What a mini-batch running ahead would take at best: the busiest stage or boundary (ahead_bound),
    or the training operations alone in lock-step, as if the frozen forwards cost nothing."""
    stages = ahead_stages(cost, partition)
    chain = one_f_one_b_time([s.forward_s for s in stages], [s.backward_s for s in stages],
                             [s.side_s for s in stages[:-1]], [s.gradient_s for s in stages[:-1]],
                             [s.allreduce_s for s in stages], partition.micro_batches)
    return max(chain, ahead_bound(stages, partition.micro_batches))


def _run_ahead(cost: CostModel, partition: Partition, lock_step: Phase1Simulation) -> Phase1Simulation:
    """The partition's phase 1 with its frozen layers running ahead by the window (up to the job's
    `run_ahead`) that gives the shortest epoch within every device's memory; `lock_step` where none fits
    or gains."""
    budgets = {d.name: d.memory_budget_bytes for d in cost.home.devices}
    best = lock_step
    for window in range(1, min(cost.job.run_ahead, RUN_AHEAD_MAX) + 1):
        sim = simulate_ahead(cost, partition, window, record=False)
        if not all(used <= budgets[name] for name, used in sim.peak_memory_bytes.items()):
            break  # a wider window holds more
        if _epoch1(cost, sim) < 0.995 * _epoch1(cost, best):  # the narrower where alike: less memory
            best = sim
    return best


def _epoch1(cost: CostModel, sim: Phase1Simulation) -> float:
    return sim.epoch_s(cost.job.minibatches_per_epoch)


def _shape(partition: Partition) -> tuple:
    return (tuple(len(g) for _, _, g in partition.stages), partition.micro_batches)


def _build(cost: CostModel, partition: Partition, sim: Phase1Simulation, strategy: str, use_cache: bool,
           reason: str) -> Plan:
    home, job = cost.home, cost.job
    names = [d.name for d in home.devices]
    batch = partition.micro_batch_size
    stages = tuple(StagePlan(x, y, tuple(names[d] for d in g), cost.shares(g, batch))
                   for x, y, g in partition.stages)
    epoch1 = _epoch1(cost, sim)
    phase1 = Phase1Plan(partition.micro_batches, batch, stages, partition.bottleneck_s,
                        estimate(cost, partition).minibatch_s, sim.minibatch_s, epoch1, sim.bubble_fraction,
                        sim.run_ahead)
    phase2, assignment = None, None
    total = epoch1 * job.epochs
    if use_cache:
        try:
            assignment = plan_phase2(cost, partition)
        except InfeasibleError:  # no room for the cache beside the shards: every epoch runs the backbone
            assignment = None
    if assignment is not None:
        redistribution, _ = simulate_transfers(cost, [(a, b, n) for a, b, n, _ in assignment.moves])
        epoch2, _ = simulate_phase2_epoch(cost, assignment.devices, assignment.step_shares)
        phase2 = Phase2Plan(
            step_shares={names[d]: assignment.step_shares[0][d] for d in assignment.devices},
            epoch_samples={names[d]: assignment.epoch_samples[d] for d in assignment.devices},
            moves=tuple(Move(names[a], names[b], n, what) for a, b, n, what in assignment.moves),
            moved_bytes=assignment.moved_bytes, redistribution_s=redistribution, epoch_s=epoch2)
        total = epoch1 + redistribution + (job.epochs - 1) * epoch2
    usage = _usage(cost, partition, sim, assignment)
    costed = dataclasses.replace(job, seq_len=home.model.seq_len)  # the plan's times hold at this length
    return Plan(strategy, home.model.name, tuple(names), costed, phase1, phase2, usage, total, reason,
                controller_bytes=controller_memory(home.model, job).total)


def check_controller(home: HomeProfile, job: TrainingJob) -> None:
    """InfeasibleError when the controller's own memory (it holds no backbone) exceeds its budget."""
    if not job.controller_budget_bytes:
        return
    use = controller_memory(home.model, job)
    if use.total > job.controller_budget_bytes:
        raise InfeasibleError(
            f"the controller needs {use.total / 2**30:.2f} GiB (tuned layers and heads {use.weights / 2**30:.2f}, "
            f"side network {use.side_state / 2**30:.2f}, an evaluation batch "
            f"{(use.buffers + use.transient) / 2**30:.2f}, its process {use.overhead / 2**30:.2f}) and may use "
            f"{job.controller_budget_bytes / 2**30:.2f} GiB: tune fewer top layers (training.top_layers) or give "
            f"it more (controller.memory_budget)")


def _usage(cost: CostModel, partition: Partition, sim: Phase1Simulation,
           assignment: Phase2Assignment | None) -> tuple[DeviceUse, ...]:
    disk1 = phase1_disk(cost, partition)
    out = []
    per_sample = cache_bytes_per_sample(cost.model, cost.job) * cost.job.cache_copies
    for i, device in enumerate(cost.home.devices):
        peak2, disk2 = 0.0, 0.0
        if assignment is not None and assignment.epoch_samples[i]:
            share = max(step[i] for step in assignment.step_shares)
            peak2 = phase2_memory(cost.model, device, cost.job, share).total
            disk2 = assignment.epoch_samples[i] * per_sample
        out.append(DeviceUse(device.name, device.memory_budget_bytes, sim.peak_memory_bytes.get(device.name, 0.0),
                             peak2, device.disk_budget_bytes, disk1.get(i, 0.0) + disk2))
    return tuple(out)


def describe_stages(plan: Plan) -> str:
    p1 = plan.phase1
    groups = "+".join(str(len(s.devices)) for s in p1.stages)
    return (f"{len(p1.stages)} stage(s) on {groups} device(s), {p1.micro_batches} micro-batch(es) of "
            f"{p1.micro_batch_size}")


def _reason(cost: CostModel, plan: Plan, runner: Plan | None, considered: int) -> str:
    p1 = plan.phase1
    ahead = f", the frozen layers running {p1.run_ahead} mini-batch(es) ahead" if p1.run_ahead else ", lock-step"
    text = (f"{describe_stages(plan)}{ahead}: {p1.minibatch_s:.3f} s per mini-batch simulated "
            f"(Eq. 4-6 estimate {p1.estimated_minibatch_s:.3f} s, slowest stage {p1.bottleneck_s:.3f} s per "
            f"micro-batch, stages idle {p1.bubble_fraction:.0%} of the time)")
    if runner is None:
        return text + f"; the only feasible candidate of {considered}."
    r1 = runner.phase1
    gain = r1.minibatch_s / p1.minibatch_s - 1 if p1.minibatch_s > 0 else 0.0
    why = []
    if len(r1.stages) > len(p1.stages):
        why.append("fewer stages mean fewer pipeline bubbles and boundary transfers")
    elif len(r1.stages) < len(p1.stages):
        why.append("more stages spread the layers so no device is the bottleneck or out of memory")
    if r1.micro_batches != p1.micro_batches:
        why.append(f"{p1.micro_batches} micro-batches balance bubbles against per-call overhead better than "
                   f"{r1.micro_batches}")
    used, r_used = sum(len(x.devices) for x in p1.stages), sum(len(x.devices) for x in r1.stages)
    if used < r_used:
        why.append(f"{used} devices rather than {r_used}: the extra devices' AllReduce and transfers cost more "
                   "than their share of the compute saves")
    elif used > r_used:
        why.append(f"{used} devices rather than {r_used}: more devices share the compute")
    if r1.bottleneck_s > p1.bottleneck_s * 1.01:
        why.append(f"its slowest stage is faster ({p1.bottleneck_s:.3f} s against {r1.bottleneck_s:.3f} s)")
    if not why:
        why.append("a better split of layers and devices")
    return (text + f". Runner-up of {considered} candidates: {describe_stages(runner)} at {r1.minibatch_s:.3f} s "
            f"({gain:+.1%} slower): " + "; ".join(why) + ".")


def explain_infeasible(home: HomeProfile, job: TrainingJob, strategy: str) -> str:
    """One line: why nothing fits, and which change (quantisation, batch size, more memory) would."""
    model = home.model
    weights = sum(model.layer_params) + model.embedding_params + model.head_params
    need = weights * job.weight_bytes_per_param + model.side_params * job.side_state_bytes_per_param
    offered = sum(max(d.memory_budget_bytes - d.runtime_overhead_bytes, 0) for d in home.devices)
    largest = max(home.devices, key=lambda d: d.memory_budget_bytes)
    head = (f"no {strategy} plan fits: {model.name} needs {need / GIB:.2f} GiB for {job.weight_bits}-bit weights "
            f"and side-network state before activations; the {len(home.devices)} device(s) offer "
            f"{offered / GIB:.2f} GiB (largest {largest.name}: {largest.memory_budget_bytes / GIB:.2f} GiB)")
    fixes = []
    for bits in (16, 8, 4):  # a quantised backbone's layers do not train: no tuned top layers then
        if bits < job.weight_bits and _fits(home, dataclasses.replace(job, weight_bits=bits, top_layers=0), strategy):
            fixes.append(f"--weight-bits {bits} (a job's model.quantization = {QUANTIZATION_OF_BITS[bits]!r})")
            break
    if job.top_layers and _fits(home, dataclasses.replace(job, top_layers=0), strategy):
        fixes.append("--top-layers 0 (training.top_layers = 0: the side network alone)")
    batch = job.batch_size // 2
    while batch >= 1 and not fixes:
        smaller = dataclasses.replace(job, batch_size=batch, micro_batches=None)
        if _fits(home, smaller, strategy):
            fixes.append(f"--batch-size {batch}")
        batch //= 2
    if strategy != "pac" and _fits(home, job, "pac"):
        fixes.append("the pac strategy (fewer layers per device)")
    if fixes:
        return head + "; it fits with " + " or ".join(fixes)
    short = max(need - offered, 0.0)
    more = f"at least {short / GIB:.2f} GiB more" if short > 0 else "more"
    return head + f"; add devices with {more} memory, use --weight-bits 4 (model.quantization = 'int4'), or a smaller model"


def _fits(home: HomeProfile, job: TrainingJob, strategy: str) -> bool:
    return bool(candidates(CostModel(home, job), strategy))
