"""The simulator's run-ahead schedule: several phase-1 mini-batches whose frozen forwards run ahead.

`ahead_timeline` plays them as pac.worker.ahead runs them (see its docstring); `simulate_ahead` turns a
partition into stage times (`CostModel.stage_parts`, `boundary_parts`) and reports the steady state.
docs/planner.md, "Run-ahead".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pac.planner.cost import CostModel
from pac.planner.phase1 import Partition
from pac.planner.simulator import Event, Phase1Simulation, one_f_one_b, step_gap


@dataclass(frozen=True)
class AheadStage:
    """One stage's times for `ahead_timeline` (per micro-batch; the boundary to the next stage)."""

    frozen_s: float  # A: the frozen layers' forward
    forward_s: float  # F: the trainable forward (side blocks, tuned layers, head)
    backward_s: float  # B
    allreduce_s: float = 0.0  # the group's AllReduce after its last backward of a mini-batch
    hidden_s: float = 0.0  # A's hidden states to the next stage
    side_s: float = 0.0  # F's side states to the next stage
    gradient_s: float = 0.0  # the next stage's B gradients back to this one
    allreduce_computes: bool = False  # the AllReduce takes the stage's compute (no core of its machine spare)


class _Run:
    """The state of `ahead_timeline`: per stage and per k * m + j (mini-batch k, micro-batch j), when
    each thing happened (None: not yet)."""

    def __init__(self, stages: Sequence[AheadStage], micro_batches: int, window: int, minibatches: int,
                 record: bool, gap_s: float) -> None:
        s, m = len(stages), micro_batches
        self.gap_s = gap_s
        self.stages, self.s, self.m, self.window, self.minibatches, self.record = stages, s, m, window, minibatches, record
        self.orders = [one_f_one_b(i, s, m) for i in range(s)]
        self.total = total = minibatches * m
        self.finish: list[float | None] = [None] * minibatches
        self.free, self.fwd_link, self.back_link = [0.0] * s, [0.0] * s, [0.0] * s  # link i: stage i to i + 1
        self.train_k, self.train_pos = [0] * s, [0] * s  # next training operation: mini-batch, 1F1B position
        self.ahead_n = [0] * s  # next frozen forward: k * m + j
        self.a_done, self.f_done = [[None] * total for _ in range(s)], [[None] * total for _ in range(s)]
        self.arrive_a, self.arrive_f = [[None] * total for _ in range(s)], [[None] * total for _ in range(s)]
        self.arrive_b = [[None] * total for _ in range(s)]
        self.stage_end = [[None] * s for _ in range(minibatches)]
        self.ends_left, self.unfinished = [s] * minibatches, minibatches
        self.waiting, self.peak = [0] * s, [0] * s
        self.events: list[Event] = []

    def choice(self, i: int) -> tuple[float, int, int] | None:
        """(start, 1 for a frozen forward, stage) of the stage's next operation, None while unknown."""
        start_t = start_a = None
        k, finish, m = self.train_k[i], self.finish, self.m
        if k < self.minibatches and (k == 0 or finish[k - 1] is not None):
            kind, j = self.orders[i][self.train_pos[i]]
            n = k * m + j
            if kind == "F":
                ready = self.a_done[i][n]
                if ready is not None and i > 0:
                    ready = None if self.arrive_f[i][n] is None else max(ready, self.arrive_f[i][n])
            else:
                ready = self.f_done[i][n] if i == self.s - 1 else self.arrive_b[i][n]
            if ready is not None:
                start_t = max(self.free[i], ready, finish[k - 1] if k else 0.0)
        n = self.ahead_n[i]
        if n < self.total:
            k = n // m
            begin = 0.0 if k - self.window <= 0 else finish[k - self.window - 1]
            if begin is not None and (i == 0 or self.arrive_a[i][n] is not None):
                start_a = max(self.free[i], begin, self.arrive_a[i][n] if i else 0.0)
        if start_t is not None and (start_a is None or start_t <= start_a):
            return start_t, 0, i
        return None if start_a is None else (start_a, 1, i)

    def frozen(self, i: int, start: float) -> None:
        st, n = self.stages[i], self.ahead_n[i]
        end = self.free[i] = self.a_done[i][n] = start + st.frozen_s
        self._note(f"stage {i}", "A", n % self.m, start, end)
        self.waiting[i] += 1
        self.peak[i] = max(self.peak[i], self.waiting[i])
        if i < self.s - 1:
            begin = max(end, self.fwd_link[i])
            self.fwd_link[i] = self.arrive_a[i + 1][n] = begin + st.hidden_s
            if st.hidden_s > 0:
                self._note(f"link {i}->{i + 1}", "send", n % self.m, begin, self.fwd_link[i])
        self.ahead_n[i] = n + 1

    def train(self, i: int, start: float) -> bool:
        """Commit stage i's next training operation; whether it ended a mini-batch."""
        st, k = self.stages[i], self.train_k[i]
        kind, j = self.orders[i][self.train_pos[i]]
        n = k * self.m + j
        end = self.free[i] = start + (st.forward_s if kind == "F" else st.backward_s)
        self._note(f"stage {i}", kind, j, start, end)
        if kind == "F":
            self.f_done[i][n] = end
            self.waiting[i] -= 1
            if i < self.s - 1:
                begin = max(end, self.fwd_link[i])
                self.fwd_link[i] = self.arrive_f[i + 1][n] = begin + st.side_s
        elif i > 0:
            gradient = self.stages[i - 1].gradient_s
            begin = max(end, self.back_link[i - 1])
            self.back_link[i - 1] = self.arrive_b[i - 1][n] = begin + gradient
            if gradient > 0:
                self._note(f"link {i}->{i - 1}", "send", j, begin, self.back_link[i - 1])
        if self.train_pos[i] + 1 < len(self.orders[i]):
            self.train_pos[i] += 1
            return False
        self.train_k[i], self.train_pos[i] = k + 1, 0  # its last backward: sends delivered, then the AllReduce
        ar_start = max(end, self.back_link[i - 1] if i > 0 else 0.0)
        self.stage_end[k][i] = ar_start + st.allreduce_s
        if st.allreduce_computes:  # no frozen forward beside it
            self.free[i] = max(self.free[i], self.stage_end[k][i])
        if st.allreduce_s > 0:
            self._note(f"stage {i}", "AR", -1, ar_start, self.stage_end[k][i])
        self.ends_left[k] -= 1
        if self.ends_left[k]:
            return False
        self.finish[k] = max(self.stage_end[k]) + self.gap_s
        self.unfinished -= 1
        return True

    def _note(self, resource: str, kind: str, micro: int, start: float, end: float) -> None:
        if self.record:
            self.events.append(Event(resource, kind, micro, start, end))

    def play(self) -> None:
        s = self.s
        choices = [self.choice(i) for i in range(s)]  # recomputed where a commit may change them
        while self.unfinished:
            known = [c for c in choices if c is not None]
            if not known:
                raise RuntimeError("the run-ahead schedule deadlocked; this is a bug in the simulator")
            start, is_frozen, i = min(known)
            if is_frozen:
                self.frozen(i, start)
                touched = (i, i + 1)
            else:
                kind = self.orders[i][self.train_pos[i]][0]
                if self.train(i, start):  # a mini-batch ended: every stage may start the next, or run ahead
                    choices = [self.choice(x) for x in range(s)]
                    continue
                touched = (i, i + 1 if kind == "F" else i - 1)
            for x in touched:
                if 0 <= x < s:
                    choices[x] = self.choice(x)


def ahead_timeline(stages: Sequence[AheadStage], micro_batches: int, window: int, minibatches: int,
                   record: bool = True, gap_s: float = 0.0) -> tuple[list[float], list[Event], list[int]]:
    """Play `minibatches` mini-batches whose frozen forwards run up to `window` mini-batches ahead, as
    pac.worker.ahead runs them. Returns (when each mini-batch ends, the events, per stage the most
    micro-batches whose frozen states wait for their training forward).

    Each stage is one compute resource. Its training operations are 1F1B per mini-batch; mini-batch k's
    start once k-1 has ended (every stage's AllReduce; then the optimiser step). Its frozen forwards A run
    in (mini-batch, micro-batch) order, A(k, j) once the previous stage's A(k, j) has arrived and mini-batch
    k - window has started. When the resource frees up it starts the training operation if that is ready
    by then, else the frozen forward that is (`ComputeGate`: training first, nothing pre-empted). F(k, j)
    also waits for A(k, j) on its own stage. Forward pieces share one channel per boundary, in the order
    they are sent; gradients another. The operation that may start first anywhere is committed first, so
    no later decision can change an earlier one. `record=False` keeps no events (faster); `gap_s` separates a
    mini-batch's end from the next one's start (the optimiser step; frozen forwards go on meanwhile)."""
    run = _Run(stages, micro_batches, window, minibatches, record, gap_s)
    run.play()
    return [float(f) for f in run.finish], run.events, run.peak


AHEAD_STEADY = 2  # mini-batches averaged for the steady state (an even count: it may alternate in pairs)


def simulate_ahead(cost: CostModel, partition: Partition, window: int, record: bool = True) -> Phase1Simulation:
    """Mini-batches of `partition` with the frozen layers running `window` ahead: `minibatch_s` is the
    steady state (the mean of AHEAD_STEADY mini-batches after the window has filled and before the last
    ones, which have nothing left to run ahead), `first_minibatch_s` the first."""
    from pac.planner.memory import run_ahead_bytes_per_sample

    stages = ahead_stages(cost, partition)
    n = len(stages)
    count = 2 * window + AHEAD_STEADY + 1  # the last steady one sees every frozen forward its window allows
    finish, events, waiting = ahead_timeline(stages, partition.micro_batches, window, count, record,
                                             step_gap(cost, partition))
    first = window + 1
    steady = (finish[first + AHEAD_STEADY - 1] - finish[first - 1]) / AHEAD_STEADY
    busy = sum(partition.micro_batches * count * (st.frozen_s + st.forward_s + st.backward_s) for st in stages)
    bubble = 1.0 - busy / (n * finish[-1]) if finish[-1] > 0 else 0.0
    in_flight = [max_live(one_f_one_b(i, n, partition.micro_batches)) for i in range(n)]
    memory: dict[str, float] = {}
    for i, (x, y, group) in enumerate(partition.stages):
        held = run_ahead_bytes_per_sample(cost.model, cost.job, x, y) * waiting[i]
        for device, share in zip(group, cost.shares(group, partition.micro_batch_size), strict=True):
            name = cost.home.devices[device].name
            memory[name] = cost.stage_memory(device, share, x, y, in_flight[i]).total + share * held
    events.sort(key=lambda e: (e.start, e.resource, e.end))
    return Phase1Simulation(steady, bubble, tuple(in_flight), memory, tuple(events), window, finish[0])


def ahead_stages(cost: CostModel, partition: Partition) -> list[AheadStage]:
    """The partition's stages as a run-ahead schedule sees them (CostModel.stage_parts, boundary_parts)."""
    parts, batch = partition.stages, partition.micro_batch_size
    busy = busy_hosts(cost, [d for _, _, group in parts for d in group])
    out = []
    for i, (x, y, group) in enumerate(parts):
        frozen, forward, backward = cost.stage_parts(group, batch, x, y)
        hidden = side = gradient = 0.0
        if i < len(parts) - 1:
            hidden, side, gradient = cost.boundary_parts(group, parts[i + 1][2], batch)
        out.append(AheadStage(frozen, forward, backward, cost.allreduce(group, cost.stage_gradient_bytes(x, y)),
                              hidden, side, gradient, any(cost.home.devices[d].host in busy for d in group)))
    return out


def busy_hosts(cost: CostModel, active: Sequence[int]) -> set[str]:
    """Machines whose `active` devices' compute threads take every core: there the ring's own work (framing,
    encryption, copies) runs on a core a frozen forward would use, so the two do not overlap."""
    wanted: dict[str, int] = {}
    for i in set(active):
        d = cost.home.devices[i]
        if d.host and d.host_cores and d.threads:
            wanted[d.host] = wanted.get(d.host, 0) + d.threads
    return {h for h, n in wanted.items() if n >= next(d.host_cores for d in cost.home.devices if d.host == h)}


def ahead_bound(stages: Sequence[AheadStage], micro_batches: int) -> float:
    """A lower bound of a run-ahead mini-batch: the busiest stage's compute, or boundary's transfers."""
    m = micro_batches
    return max(max(m * (st.frozen_s + st.forward_s + st.backward_s) + st.allreduce_s * st.allreduce_computes
                   for st in stages),
               max(m * (st.hidden_s + st.side_s) for st in stages), max(m * st.gradient_s for st in stages))


def max_live(ops: list[tuple[str, int]]) -> int:
    """The most micro-batches between their forward and their backward in a stage's 1F1B order."""
    live = peak = 0
    for kind, _ in ops:
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return peak
