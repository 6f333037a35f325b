"""Phase 1 of a job as the controller drives it: load every stage replica, then one mini-batch at a time.

Each stage replica gets its rows of the tokenised mini-batch (the last stage also the labels);
activations, gradients and AllReduce go between the daemons directly. docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import torch

from pac.cluster.checkpoint import Position
from pac.cluster.context import JobContext
from pac.cluster.evaluation import evaluation_precision
from pac.cluster.prepare import lengths_of
from pac.data.batching import Encoded, collate
from pac.errors import TrainingFailed
from pac.net.stage_client import StageClient
from pac.pipeline.split import loss_count, row_ranges, select_rows
from pac.pipeline.stage import clip_coefficient
from pac.planner.plan import Plan
from pac.side.network import SideConfig
from pac.techniques.top import trained_tensors
from pac.train.loop import batches
from pac.worker.spec import MicroIn, StageSpec
from pac.worker.tensors import pack


async def gather_state(stages: StageClient, addresses: list[list[str]]) -> dict[str, torch.Tensor]:
    """The trained tensors (and optimiser state) of every stage, from its first replica."""
    state: dict[str, torch.Tensor] = {}
    for stage_addresses in addresses:
        state.update(await stages.get_state(stage_addresses[0]))
    return state


class RunAheadQueue:
    """An epoch's mini-batches queued on the stages to run their frozen layers ahead (RunStep ahead), in
    order, each at most once: the plan's window past the step training now."""

    def __init__(self, phase1: Phase1, addresses: list[list[str]], groups: list[list[Encoded]],
                 key_of: dict[int, str], step: int, first: int) -> None:
        """`step`: the global step of mini-batch `first`, the first one this epoch trains."""
        self.phase1, self.addresses, self.groups, self.key_of = phase1, addresses, groups, key_of
        self.first_step, self.next = step - first, first  # the step of the epoch's mini-batch 0; the next to queue
        self.window = phase1.plan.phase1.run_ahead

    async def up_to(self, index: int) -> None:
        while self.window and self.next < len(self.groups) and self.next <= index:
            group = self.groups[self.next]
            await self.phase1.run_ahead(self.addresses, self.first_step + self.next, group,
                                        [self.key_of[id(i)] for i in group])
            self.next += 1


class Phase1:
    def __init__(self, ctx: JobContext, plan: Plan, on_step: Callable[..., None]) -> None:
        self.ctx, self.plan, self.on_step = ctx, plan, on_step
        self.evaluations = 0  # evaluation mini-batches run through the stages (their stream numbers)
        self.pending: tuple[int, float] | None = None  # (step, clip): its optimiser step, not yet taken

    async def run(self, addresses: list[list[str]], epochs: int, steps_per_epoch: int, use_cache: bool,
                  start: Position | None = None, holders: dict[str, list[str]] | None = None,
                  ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], int]:
        """The phase-1 epochs on the loaded stages, from `start` (a resumed job's checkpoint; `holders`
        the devices caching what it had cached); returns (the trained state, the device caching each
        stage's part of each sample, the steps taken)."""
        p, training = self.ctx.prepared, self.ctx.job.training
        start = start or Position(1, 0, 0)
        generator = torch.Generator().manual_seed(training.seed)
        torch.manual_seed(training.seed)
        holders = {} if holders is None else holders
        step, state, every = start.step, {}, training.checkpoint_steps
        key_of = {id(item): key for item, key in zip(p.train_items, p.keys, strict=True)}
        for epoch in range(epochs):
            groups = batches(p.train_items, training.batch_size, generator)  # a finished epoch's: replayed
            if epoch < start.epoch:
                continue
            began, samples = time.perf_counter(), 0
            first = start.in_epoch if epoch == start.epoch else 0  # before it: taken before the checkpoint
            ahead = RunAheadQueue(self, addresses, groups, key_of, step, first)
            for index, group in enumerate(groups):
                if index < first:
                    continue
                tick = time.perf_counter()
                await ahead.up_to(index)  # the step's own frozen forwards (queued already but at the start)
                queueing = asyncio.ensure_future(ahead.up_to(index + self.plan.phase1.run_ahead))
                try:  # the next ones are queued while this step runs
                    loss, events = await self.step(addresses, step, group, [key_of[id(i)] for i in group],
                                                   holders if epoch == 0 and use_cache else None)
                    await queueing
                finally:
                    queueing.cancel()
                if step == min(2, steps_per_epoch - 1) and epoch == 0:
                    self.ctx.record.history.events = events  # a step after warm-up, for the timeline
                self.on_step(step, epoch, 1, loss, time.perf_counter() - tick, len(group), index + 1, len(groups))
                step, samples = step + 1, samples + len(group)
                if every and (index + 1) % every == 0 and index + 1 < len(groups):
                    await self.checkpoint(addresses, Position(1, epoch, step, index + 1), holders)
            self.ctx.record.end_epoch(epoch, 1, time.perf_counter() - began, samples)
            state = await self.checkpoint(addresses, Position(1, epoch + 1, step), holders)
            await self.ctx.epoch_ended(epoch + 1, step, state)
        return state, holders, step

    async def checkpoint(self, addresses: list[list[str]], position: Position,
                         holders: dict[str, list[str]]) -> dict[str, torch.Tensor]:
        """Gather every stage's state and write it as a checkpoint (the cache holders by node id)."""
        p, node = self.ctx.prepared, self.ctx.node_of()
        await self.apply_pending(addresses)
        state = await gather_state(self.ctx.stages, addresses)
        self.ctx.record.save_checkpoint(p.model, p.task, state, position,
                                        {k: [node.get(a, "") if a else "" for a in v] for k, v in holders.items()})
        return state

    async def apply_pending(self, addresses: list[list[str]]) -> None:
        """The last step's optimiser step where no RunStep follows to carry it (ApplyStep)."""
        if self.pending is not None:
            step, clip = self.pending
            await asyncio.gather(*(self.ctx.stages.apply_step(a, step, clip)
                                   for stage_addresses in addresses for a in stage_addresses))
            self.pending = None

    async def load(self, total_steps: int, use_cache: bool, state: dict[str, torch.Tensor] | None = None,
                   steps_done: int = 0) -> list[list[str]]:
        """Load every stage replica: the initial side network and head, or a checkpoint's `state` (with
        the optimiser's) after `steps_done` steps."""
        plan, p = self.plan, self.ctx.prepared
        self.pending = None  # fresh stages: a step of the replicas before is not theirs to take
        by_node = {d.node_id: d.address for d in self.ctx.devices}
        missing = sorted({n for s in plan.phase1.stages for n in s.devices} - set(by_node))
        if missing:
            raise TrainingFailed(f"the plan uses devices {missing}, which are not among the job's devices "
                                 f"{sorted(by_node)}; plan again (pacctl plan) or list them in [devices]")
        addresses = [[by_node[n] for n in s.devices] for s in plan.phase1.stages]
        shares = [list(s.shares) for s in plan.phase1.stages]
        job, training = self.ctx.job, self.ctx.job.training
        if state is None:
            state = trained_tensors(p.model)
        data = pack(state)
        train = job.train_config()
        top = p.technique.top
        side = SideConfig(training.reduction_factor,
                          tuple(training.side_layers) if training.side_layers is not None else None, top.count)
        calls = []
        for s, stage in enumerate(plan.phase1.stages):
            for r, address in enumerate(addresses[s]):
                spec = StageSpec(
                    job_id=self.ctx.job_id, model=job.model.name_or_path, quantization=job.model.quantization,
                    seed=training.seed, stage=s, replica=r, steps_done=steps_done, first=stage.first_layer, end=stage.end_layer,
                    side=side, head=p.head, train=train, total_steps=total_steps, shares=shares, addresses=addresses,
                    pad_id=p.pad_id, codec=self.ctx.options.codec,
                    cache_precision=job.cache.precision if use_cache else None, cache_keep=job.cache.keep,
                    timeout_s=self.ctx.options.step_timeout_s,
                    cache_directory=str(job.cache.directory) if job.cache.directory else None, top=top,
                    run_ahead=plan.phase1.run_ahead, evaluation_precision=evaluation_precision(job.cache.precision))
                self.ctx.loaded.add(address)
                calls.append(self.ctx.stages.load(address, f"loading stage {s} ({stage.first_layer}-"
                                                  f"{stage.end_layer - 1})", spec, data))
        replies = await asyncio.gather(*calls)
        for reply in replies:
            if reply.fingerprint != p.fingerprint:
                raise TrainingFailed(f"a device loaded {self.ctx.job.model.name_or_path} with other weights "
                                     f"(fingerprint {reply.fingerprint[:12]}, here {p.fingerprint[:12]}): every "
                                     f"device must have the same model installed")
        held = [r.held_bytes for r in replies]
        self.ctx.record.log(f"phase 1: {len(plan.phase1.stages)} stage(s) on {sum(len(a) for a in addresses)} device(s) "
                 f"loaded (largest stage {max(held) / 1e6:.0f} MB, slowest load {max(r.load_s for r in replies):.1f} s)")
        return addresses

    async def evaluation_records(self, addresses: list[list[str]], items: list[Encoded], keys: list[str],
                                 cache) -> None:
        """Run `items` (their cache `keys`) through the loaded stages, the backbone's forward alone, and put
        their whole cache records in `cache`: the controller then scores them from the cache, side network
        and head only, and never holds the backbone. Mini-batches and micro-batches as the plan's, one more
        in flight than there are stages, so that every stage has the next one while the last finishes one
        (each device takes its job's requests one at a time, in turn)."""
        from pac.worker.phase2 import join_records

        training, plan = self.ctx.job.training, self.plan
        timeout = self.ctx.options.step_timeout_s
        where: dict[tuple[str, int], list[str]] = {}
        in_flight: list[asyncio.Future] = []
        try:
            for start in range(0, len(items), training.batch_size):
                group, group_keys = items[start:start + training.batch_size], keys[start:start + training.batch_size]
                micro, micro_items = self._split(group)
                self.evaluations += 1
                calls = []
                for s, stage_addresses in enumerate(addresses):
                    for r, address in enumerate(stage_addresses):
                        batches = self._micro_batches(micro, micro_items, group, group_keys, s, r)
                        calls.append(self.ctx.stages.evaluate_step(address, f"evaluation data through stage {s}",
                                                                   self.evaluations, batches, timeout))
                        for rows in micro_items:
                            first, stop = row_ranges(len(rows), tuple(plan.phase1.stages[s].shares))[r]
                            where.setdefault((address, s), []).extend(group_keys[i] for i in rows[first:stop])
                in_flight.append(asyncio.gather(*calls))
                if len(in_flight) > len(addresses):
                    await in_flight.pop(0)
            while in_flight:
                await in_flight.pop(0)
        finally:
            for waiting in in_flight:  # a failure, or this was cancelled: the calls still out are cancelled
                waiting.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        found = await asyncio.gather(*(self.ctx.stages.evaluation_records(address, s, wanted, timeout)
                                       for (address, s), wanted in where.items()))
        parts: dict[str, list] = {}
        for (_, s), records in zip(where, found, strict=True):
            for key, piece in records.items():
                parts.setdefault(key, [None] * len(addresses))[s] = piece
        for key in keys:
            pieces = parts.get(key)
            if pieces is None or any(piece is None for piece in pieces):
                raise TrainingFailed(f"the stages returned no evaluation record of sample {key[:12]}")
            cache.put_raw(key, *join_records(pieces))
        cache.flush()

    def _micro_batches(self, micro: list[dict], micro_items: list[list[int]], group: list[Encoded],
                       group_keys: list[str], stage: int, replica: int) -> list[MicroIn]:
        """What one replica of `stage` is sent of each micro-batch: its rows (the labels to the last stage)."""
        plan = self.plan
        shares = tuple(plan.phase1.stages[stage].shares)
        last = stage == len(plan.phase1.stages) - 1
        out = []
        for index, (batch, rows) in enumerate(zip(micro, micro_items, strict=True)):
            start, stop = row_ranges(len(rows), shares)[replica]
            if start == stop:
                out.append(MicroIn(index, len(rows), None))
                continue
            part = select_rows(batch, start, stop)
            if not last:
                part = {k: v for k, v in part.items() if k != "labels"}
            out.append(MicroIn(index, len(rows), part, [group_keys[i] for i in rows[start:stop]],
                               [lengths_of(group[i]) for i in rows[start:stop]]))
        return out

    def _split(self, group: list[Encoded]) -> tuple[list[dict], list[list[int]]]:
        """A mini-batch's micro-batches as the plan cuts them: (their tensors, their rows in `group`)."""
        p = self.ctx.prepared
        ranges = row_ranges(len(group), min(self.plan.phase1.micro_batches, len(group)))
        return [collate(group[a:b], p.pad_id, p.task) for a, b in ranges], [list(range(a, b)) for a, b in ranges]

    async def run_ahead(self, addresses: list[list[str]], step: int, group: list[Encoded],
                        group_keys: list[str]) -> None:
        """Queue mini-batch `step`'s frozen forwards on every replica (the plan's run-ahead window)."""
        micro, micro_items = self._split(group)
        await asyncio.gather(*(
            self.ctx.stages.run_ahead(address, f"queueing step {step} on stage {s}", step,
                                      self._micro_batches(micro, micro_items, group, group_keys, s, r),
                                      self.ctx.options.step_timeout_s)
            for s, stage_addresses in enumerate(addresses) for r, address in enumerate(stage_addresses)))

    async def step(self, addresses: list[list[str]], step: int, group: list[Encoded], group_keys: list[str],
                   holders: dict[str, list[str]] | None) -> tuple[float, list[dict]]:
        p, training = self.ctx.prepared, self.ctx.job.training
        plan = self.plan
        micro, micro_items = self._split(group)
        family = p.model.side.spec.family
        loss_total = sum(loss_count(b, p.task, family) for b in micro)
        calls, who = [], []
        single = len(addresses) == 1  # one stage: each replica takes its optimiser step inside RunStep
        before = None if self.pending is None else self.pending[1]  # else the previous step's comes with it
        for s, stage_addresses in enumerate(addresses):
            for r, address in enumerate(stage_addresses):
                if plan.phase1.run_ahead:  # the replica has the tensors from the step's ahead request
                    batches = [MicroIn(i, len(rows), None) for i, rows in enumerate(micro_items)]
                else:
                    batches = self._micro_batches(micro, micro_items, group, group_keys, s, r)
                calls.append(self.ctx.stages.run_step(address, f"step {step} of stage {s}", step, loss_total,
                                                      batches, single, training.max_grad_norm,
                                                      self.ctx.options.step_timeout_s, before))
                who.append((s, r, address))
                if holders is not None:
                    for rows in micro_items:
                        start, stop = row_ranges(len(rows), tuple(plan.phase1.stages[s].shares))[r]
                        for i in rows[start:stop]:
                            holders.setdefault(group_keys[i], [None] * len(addresses))[s] = address
        replies = await asyncio.gather(*calls)
        loss = sum(reply.loss for reply, (s, _, _) in zip(replies, who, strict=True) if s == len(addresses) - 1)
        norms = {}
        for reply, (s, _, _) in zip(replies, who, strict=True):
            norms.setdefault(s, reply.grad_square_norm)
        self.pending = None  # taken at the start of this step
        if not single:  # the pipeline-wide norm: every stage clips by the same coefficient, at the next RunStep
            self.pending = (step, clip_coefficient([norms[s] for s in sorted(norms)], training.max_grad_norm))
        events = []
        node = {d.address: d.node_id for d in self.ctx.devices}
        for reply, (s, r, address) in zip(replies, who, strict=True):
            for event in reply.events:
                events.append({**event, "stage": s, "replica": r, "device": node.get(address, address)})
        return loss, events
