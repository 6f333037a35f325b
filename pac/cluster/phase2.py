"""Phase 2 of a job as the controller drives it: move the cached states, then data parallel epochs.

Cached hidden states and the side network are redistributed so that each phase-2 device holds every
layer's states of its share of the samples (moving as few bytes as possible, pac.cluster.assign); then
every device trains the whole side network on its rows of each step. docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import torch

from pac.cluster.assign import assign_phase2, phase2_counts, phase2_steps
from pac.cluster.checkpoint import Position
from pac.cluster.context import JobContext
from pac.cluster.phase1 import gather_state
from pac.data.batching import Encoded, collate
from pac.errors import TrainingFailed
from pac.pipeline.layers import LayerSlice
from pac.pipeline.split import loss_count
from pac.planner.plan import Plan
from pac.worker.spec import EpochStep, GatherPlan, GatherSample, Phase2Spec, shard_ends_with_final, stage_taps
from pac.worker.tensors import pack

log = logging.getLogger(__name__)


class Phase2:
    def __init__(self, ctx: JobContext, plan: Plan, on_step: Callable[..., None]) -> None:
        self.ctx, self.plan, self.on_step = ctx, plan, on_step
        self.info: dict | None = None  # what moved, for metrics.json
        self.assigned_by_node: dict[str, list[str]] = {}  # node -> its samples' keys
        self.step_counts_by_node: list[dict[str, int]] = []  # per step, node -> samples
        self.started = 0.0  # when loading phase 2 began: the redistribution's clock
        self.members: list[str] = []  # the loaded members' addresses
        self.replicas_by_node: dict[str, list[str]] = {}  # node -> the nodes holding a copy of its records
        self.on_epoch: Callable[[], Awaitable[None]] | None = None  # after each epoch but the last

    async def run(self, state: dict[str, torch.Tensor], holders: dict[str, list[str]], stage_count: int,
                  first_step: int, total_steps: int, start: Position | None = None,
                  assigned_by_node: dict[str, list[str]] | None = None,
                  replicas_by_node: dict[str, list[str]] | None = None) -> dict[str, torch.Tensor]:
        """Phase 2 from the state phase 1 left (`holders[key][stage]`: the device caching each part of a
        sample; "" where none does, and the member recomputes it), or from an earlier run's (`start`, and
        the samples each device trained, `assigned_by_node`, kept where the devices are the same; where
        they are not, whole records move from the device holding them or a copy, `replicas_by_node`);
        returns the trained state after the last epoch."""
        p, training = self.ctx.prepared, self.ctx.job.training
        by_node, node = self.ctx.address_of(), self.ctx.node_of()
        shares = {by_node[n]: c for n, c in self.plan.phase2.step_shares.items() if c > 0}
        members = sorted(shares)
        counts = phase2_counts(len(p.train_items), training.batch_size, shares)
        epoch_counts = {d: sum(c[d] for c in counts) for d in members}
        whole: dict[str, str] = {}  # key -> the device whose phase-2 cache holds its whole record
        serving: list[str] = []  # devices that are no members but hold records of the run before
        if assigned_by_node and sorted(assigned_by_node) == sorted(node[a] for a in members) and all(
                len(keys) == epoch_counts[by_node[n]] for n, keys in assigned_by_node.items()):
            assigned = {by_node[n]: keys for n, keys in assigned_by_node.items()}  # their caches hold these
        else:
            if assigned_by_node:  # the members changed: records move whole from where they are, else recomputed
                whole = held_wholly(assigned_by_node, replicas_by_node or {}, by_node, set(members))
                serving = sorted(phase2_holders(assigned_by_node, replicas_by_node or {}, by_node) - set(members))
                holders = {k: [a] * stage_count for k, a in whole.items()}  # to keep them where they are
            nowhere = [""] * stage_count
            assigned = assign_phase2(p.keys, {k: holders.get(k) or nowhere for k in p.keys}, self._stage_weights(),
                                     epoch_counts)
            if assigned_by_node:
                holders = {}  # no phase-1 shard is left to fetch from
        self.assigned_by_node = {node[a]: keys for a, keys in assigned.items()}
        self.step_counts_by_node = [{node[a]: c for a, c in step.items()} for step in counts]
        await self._load(members, state, first_step, total_steps, serving)
        self.members = members  # each holds the whole side network from here on
        await self._gather(members, assigned, holders, stage_count, whole)
        await self._replicate(members, assigned, stage_count)
        await self._release_others(members)
        step, start = first_step, start or Position(1, 1, first_step)
        for epoch in range(max(1, start.epoch), training.epochs):
            skip = start.in_epoch if epoch == start.epoch else 0
            step = await self._epoch(epoch, step, members, assigned, counts, skip)
            state = await gather_state(self.ctx.stages, [[members[0]]])
            self.ctx.record.save_checkpoint(p.model, p.task, state, Position(2, epoch + 1, step),
                                            assigned=self.assigned_by_node, replicas=self.replicas_by_node)
            await self.ctx.epoch_ended(epoch + 1, step, state)
            if self.on_epoch is not None and epoch + 1 < training.epochs:
                await self.on_epoch()  # may stop this run here: a device came back (pac.cluster.faults)
        return state

    async def _load(self, members: list[str], state: dict[str, torch.Tensor], first_step: int,
                    total_steps: int, serving: list[str]) -> None:
        """Every member gets the whole side network and head, its optimiser state and the LM head; each
        device of `serving` opens its kept cache to serve the members its records (and nothing more)."""
        p, job = self.ctx.prepared, self.ctx.job
        spec_base = dict(
            job_id=self.ctx.job_id, model=job.model.name_or_path, quantization=job.model.quantization,
            seed=job.training.seed, side_spec=p.model.side.spec, head=p.head, train=job.train_config(),
            total_steps=total_steps, steps_done=first_step, members=members, fingerprint=p.fingerprint,
            tokenizer_fingerprint=p.backbone.tokenizer.fingerprint(), pad_id=p.pad_id,
            cache_precision=job.cache.precision, cache_keep=job.cache.keep, timeout_s=self.ctx.options.step_timeout_s,
            cache_directory=str(job.cache.directory) if job.cache.directory else None,
            top=p.technique.top)
        tensors = dict(state)
        if p.task == "lm":
            head = p.lm_head
            tensors["lm_head.weight"] = head.weight
            if head.bias is not None:
                tensors["lm_head.bias"] = head.bias
            spec_base["lm_head_scale"] = head.scale
        data = pack(tensors)
        self.started = time.perf_counter()
        await asyncio.gather(*(self.ctx.stages.load(a, "loading phase 2", Phase2Spec(**spec_base, rank=rank), data)
                               for rank, a in enumerate(members)),
                             *(self.ctx.stages.load(a, "opening its cache", Phase2Spec(
                                 **{**spec_base, "members": [a]}, rank=0, holds_only=True), pack({})) for a in serving))
        self.ctx.loaded.update(members + serving)

    async def _gather(self, members: list[str], assigned: dict[str, list[str]], holders: dict[str, list[str]],
                      stage_count: int, whole: dict[str, str]) -> None:
        """Each member fetches the cached states of its samples from the devices holding them."""
        p, stages = self.ctx.prepared, self.ctx.stages
        items = dict(zip(p.keys, p.train_items, strict=True))
        nowhere = ("",) * stage_count
        replies = await asyncio.gather(*(stages.gather_cache(a, GatherPlan(a, stage_count, tuple(
            GatherSample(k, items[k], tuple(holders.get(k) or nowhere), whole.get(k, "")) for k in assigned[a])))
            for a in members))
        moved = sum(fetched for fetched, _, _ in replies)
        kept = sum(local for _, local, _ in replies)
        missing = sum(left for _, _, left in replies)
        seconds = time.perf_counter() - self.started
        self.info = {"devices": members, "samples_per_device": {a: len(assigned[a]) for a in members},
                     "moved_bytes": moved, "kept_bytes": kept, "recomputed_samples": missing,
                     "redistribution_s": seconds}
        self.ctx.record.message(f"phase 2: {len(members)} device(s); moved {moved / 1e6:.1f} MB of cached states "
                                f"(kept {kept / 1e6:.1f} MB in place) and the trained state in {seconds:.1f} s"
                                + (f"; {missing} sample(s) held nowhere are recomputed" if missing else ""))

    async def _replicate(self, members: list[str], assigned: dict[str, list[str]], stage_count: int) -> None:
        """`cache.replicas` copies of each member's records on the members after it in the ring, so that a
        lost member's share is fetched from a copy instead of recomputed from the backbone."""
        count = min(self.ctx.job.cache.replicas, len(members) - 1)
        if count <= 0:
            return
        p, node = self.ctx.prepared, self.ctx.node_of()
        items = dict(zip(p.keys, p.train_items, strict=True))
        nowhere = ("",) * stage_count
        copies: dict[str, list[GatherSample]] = {a: [] for a in members}
        for i, a in enumerate(members):
            for j in range(1, count + 1):
                b = members[(i + j) % len(members)]
                copies[b] += [GatherSample(k, items[k], nowhere, a) for k in assigned[a]]
                self.replicas_by_node.setdefault(node[a], []).append(node[b])
        began = time.perf_counter()
        replies = await asyncio.gather(*(self.ctx.stages.gather_cache(b, GatherPlan(b, stage_count, tuple(copies[b])))
                                         for b in members))
        moved, seconds = sum(fetched for fetched, _, _ in replies), time.perf_counter() - began
        self.info.update(replicas=count, replica_bytes=moved, replication_s=seconds)
        self.ctx.record.message(f"phase 2: {count} cop{'y' if count == 1 else 'ies'} of every member's cached "
                                f"states on the next member{'s' if count > 1 else ''}: {moved / 1e6:.1f} MB in "
                                f"{seconds:.1f} s")

    async def _release_others(self, members: list[str]) -> None:
        """Every member has gathered its samples: the phase-1 devices that train no share of phase 2 are
        needed no more, and let the job go (their shards go with it unless the job keeps its cache)."""
        others = sorted(self.ctx.loaded - set(members))

        async def one(address: str) -> None:
            try:
                await self.ctx.stages.release(address, self.ctx.job.cache.keep)
            except TrainingFailed as error:
                log.warning("job %s: %s", self.ctx.job_id, error)

        await asyncio.gather(*(one(a) for a in others))
        self.ctx.loaded.difference_update(others)

    async def _epoch(self, epoch: int, step: int, members: list[str], assigned: dict[str, list[str]],
                     counts: list[dict[str, int]], skip: int = 0) -> int:
        """One phase-2 epoch from its step `skip` (a resumed job): every member trains its rows of each
        step, in runs of `training.checkpoint_steps` with a checkpoint after each; returns the next step."""
        p, training = self.ctx.prepared, self.ctx.job.training
        self.ctx.record.update(state="running", phase=2, epoch=epoch + 1)
        plan_steps = phase2_steps(assigned, counts, training.seed, epoch)
        began, samples = time.perf_counter(), 0
        every = training.checkpoint_steps or len(plan_steps)
        for first in range(skip, len(plan_steps), every):
            run = plan_steps[first:first + every]
            samples += await self._steps(epoch, step, first, len(plan_steps), members, run)
            step += len(run)
            if first + len(run) < len(plan_steps):
                state = await gather_state(self.ctx.stages, [[members[0]]])
                self.ctx.record.save_checkpoint(p.model, p.task, state, Position(2, epoch, step, first + len(run)),
                                                assigned=self.assigned_by_node, replicas=self.replicas_by_node)
        self.ctx.record.end_epoch(epoch, 2, time.perf_counter() - began, samples)
        return step

    async def _steps(self, epoch: int, step: int, index: int, steps: int, members: list[str],
                     run: list[dict[str, list[str]]]) -> int:
        """Steps `index`.. of the epoch on every member (a stream of reports each); returns their samples."""
        p, stages = self.ctx.prepared, self.ctx.stages
        items = dict(zip(p.keys, p.train_items, strict=True))
        totals = [self._loss_total([items[k] for d in s for k in s[d]]) for s in run]
        iterators = [stages.train_epoch(a, epoch, step, [EpochStep(tuple(s[a]), total)
                                                         for s, total in zip(run, totals, strict=True)],
                                        self.ctx.options.step_timeout_s * len(run)) for a in members]
        samples = 0
        try:
            for offset in range(len(run)):
                reports = await _next_of_each(iterators)
                samples += sum(r.samples for r in reports)
                self.on_step(step + offset, epoch, 2, sum(r.loss for r in reports), max(r.seconds for r in reports),
                             sum(r.samples for r in reports), index + offset + 1, steps,
                             allreduce_s=max(r.allreduce_s for r in reports))
            for it in iterators:  # the streams end after the last step
                await anext(it, None)
        finally:
            for it in iterators:  # a stop between steps: every member's stream is cancelled
                await it.aclose()
        return samples

    def _stage_weights(self) -> list[int]:
        """Bytes per sample each stage's shard holds, up to a common factor: its taps (+ the final state)."""
        spec, stages = self.ctx.prepared.model.side.spec, self.plan.phase1.stages
        out = []
        for s, stage in enumerate(stages):
            layers = LayerSlice(stage.first_layer, stage.end_layer, spec.stack_sizes)
            out.append(len(stage_taps(spec, layers)) + int(shard_ends_with_final(spec, s == len(stages) - 1)))
        return out

    def _loss_total(self, group: list[Encoded]) -> int:
        p = self.ctx.prepared
        if p.task != "lm":
            return len(group)
        return loss_count(collate(group, p.pad_id, p.task), p.task, p.model.side.spec.family)


def held_wholly(assigned_by_node: dict[str, list[str]], replicas_by_node: dict[str, list[str]],
                by_node: dict[str, str], members: set[str]) -> dict[str, str]:
    """Sample key -> the address of a device of the job (`by_node`) whose phase-2 cache holds its whole
    record: the node that trained it before or one holding a copy, a member of `members` first; keys none
    of them holds are left out."""
    out = {}
    for n, keys in assigned_by_node.items():
        held = [by_node[c] for c in [n, *replicas_by_node.get(n, [])] if c in by_node]
        address = next((a for a in held if a in members), held[0] if held else "")
        if address:
            out.update(dict.fromkeys(keys, address))
    return out


def phase2_holders(assigned_by_node: dict[str, list[str]], replicas_by_node: dict[str, list[str]],
                   by_node: dict[str, str]) -> set[str]:
    """The addresses of the devices of the job whose phase-2 caches hold records of an earlier run."""
    nodes = set(assigned_by_node) | {c for copies in replicas_by_node.values() for c in copies}
    return {by_node[n] for n in nodes if n in by_node}


async def _next_of_each(iterators: list) -> list:
    """The next item of every stream; if one fails (or this is cancelled), the others' waits are cancelled
    first, so the streams can be closed."""
    waits = [asyncio.ensure_future(anext(it)) for it in iterators]
    try:
        return await asyncio.gather(*waits)
    except BaseException:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        raise
