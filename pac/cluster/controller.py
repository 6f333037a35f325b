"""The controller of a distributed fine-tuning job: what `pacctl train job.toml` runs.

It takes the devices, profiles them (once per host; daemons keep measurements), plans, initialises the
side network and head once and sends every stage its tensors, then drives phase 1 step by step (each
stage replica gets its rows of the tokenised mini-batch; the last stage also the labels; activations,
gradients and AllReduce go between the daemons directly), checkpoints after every epoch, moves the
cached states for phase 2, drives the phase-2 epochs, evaluates, and writes the output directory.
docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch

from pac.cluster.assign import assign_phase2, phase2_counts, phase2_steps
from pac.cluster.client import LOAD_TIMEOUT_S, Device, Stages, TrainingFailed, blob_stream, collect_blobs
from pac.cluster.measure import measure_home, profile_sizes
from pac.cluster.prepare import lengths_of, prepare
from pac.data.batching import Encoded, collate
from pac.pipeline.split import loss_count, row_ranges, select_rows
from pac.pipeline.stage import clip_coefficient
from pac.planner.plan import Plan
from pac.planner.planner import plan_job
from pac.planner.profile import home_from_dict
from pac.security import Identity
from pac.train.loop import batches, evaluate
from pac.v1 import stage_pb2
from pac.worker.spec import Phase2Spec, StageSpec, encoded_to_json, stage_taps
from pac.worker.tensors import pack, unpack

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How the controller runs a job beyond the job file (benchmarks pick baselines here)."""

    strategy: str = "pac"  # pac | pipeline-only | data-only | single-device (pac.planner.baselines)
    use_cache: bool | None = None  # None: as the job says
    profile_batch_sizes: tuple[int, ...] | None = None  # None: 1, B/4, B (at most 3)
    step_timeout_s: float = 300.0
    lease_s: float = 120.0  # a device releases the job after this long without word from the controller
    codec: str = "none"  # forward activations on the wire
    evaluate: bool = True


@dataclass
class History:
    # {"step", "epoch", "phase", "loss", "seconds", "samples", "allreduce_s" (phase 2: the slowest device's)}
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "phase", "seconds", "samples_per_s"}
    events: list[dict] = field(default_factory=list)  # measured timeline of one phase-1 step


class Controller:
    def __init__(self, job, devices: list[Device], identity: Identity | None, output_dir: Path,
                 options: RunOptions | None = None, progress=None, log_line: Callable[[str], None] = print,
                 plan: Plan | None = None) -> None:
        self.job, self.devices, self.identity = job, devices, identity
        self.options = options or RunOptions()
        self.output_dir = output_dir
        self.progress, self.log = progress, log_line
        self.plan = plan
        self.history = History()
        self.job_id = f"job-{os.getpid()}-{int(time.time())}"
        self.stages = Stages(devices, identity)
        self.loaded: set[str] = set()
        self.status: dict[str, Any] = {"job_id": self.job_id, "pid": os.getpid(), "state": "starting",
                                       "output_dir": str(output_dir), "started_unix": time.time(),
                                       "devices": [f"{d.node_id} ({d.address})" for d in devices]}
        self.checkpoint: Path | None = None
        self.interrupted = False

    # ---- Ctrl-C --------------------------------------------------------------------------------------------
    def _watch_interrupt(self) -> bool:
        """Ctrl-C (SIGINT) as an event-loop callback: mark the job stopped and cancel it. Every step also
        checks the mark (`_stop_if_interrupted`), so a stop lands at the next step boundary even if a
        cancellation is absorbed on its way; a second Ctrl-C stops at once, releasing nothing."""
        loop, task = asyncio.get_running_loop(), asyncio.current_task()

        def interrupt() -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, interrupt)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
            return False
        return True

    def _stop_if_interrupted(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    # ---- status and checkpoints ----------------------------------------------------------------------
    def _status(self, **fields) -> None:
        from pac.cluster.report import write_metrics

        self.status.update(fields, updated_unix=time.time())
        write_metrics(self.output_dir / "status.json", self.status)

    def _save_checkpoint(self, state: dict[str, torch.Tensor], epoch: int, step: int, phase: int) -> None:
        from safetensors.torch import save_file

        from pac.adapter import save_adapter

        directory = self.output_dir / "checkpoint"
        directory.mkdir(parents=True, exist_ok=True)
        model = self.prepared.model
        model.load_state_dict({k: v for k, v in state.items() if k.startswith(("side.", "head."))}, strict=False)
        save_adapter(model, directory / "adapter.safetensors", extra={"task": self.prepared.task})
        optimizer = {k: v.contiguous() for k, v in state.items() if k.startswith("opt.")}
        save_file(optimizer, str(directory / "optimizer.safetensors.tmp"))
        os.replace(directory / "optimizer.safetensors.tmp", directory / "optimizer.safetensors")
        (directory / "checkpoint.json").write_text(json.dumps({"epoch": epoch, "step": step, "phase": phase,
                                                                "job_id": self.job_id}) + "\n")
        self.checkpoint = directory
        self.log_checkpoint = f"checkpoint after epoch {epoch}: {directory}"
        self._status(checkpoint=str(directory), checkpoint_epoch=epoch)

    # ---- the plan ------------------------------------------------------------------------------------
    async def make_plan(self, samples: int, use_cache: bool) -> Plan:
        if self.plan is not None:
            return self.plan
        if self.job.plan.file is not None:
            return Plan.load(self.job.plan.file)
        sizes = list(self.options.profile_batch_sizes or profile_sizes(self.job.training.batch_size,
                                                                        self.job.training.micro_batches))
        document = await measure_home(self.devices, self.identity, self.job, sizes, self.log)
        (self.output_dir / "profile.json").write_text(json.dumps(document, indent=1) + "\n")
        home = home_from_dict(document)
        strategy = self.options.strategy
        result = plan_job(home, self.job.to_training_job(samples, use_cache), strategy)
        return result.plan

    # ---- phase 1 -------------------------------------------------------------------------------------
    async def load_stages(self, plan: Plan, total_steps: int, use_cache: bool) -> list[list[str]]:
        p = self.prepared
        by_node = {d.node_id: d.address for d in self.devices}
        missing = sorted({n for s in plan.phase1.stages for n in s.devices} - set(by_node))
        if missing:
            raise TrainingFailed(f"the plan uses devices {missing}, which are not among the job's devices "
                                 f"{sorted(by_node)}; plan again (pacctl plan) or list them in [devices]")
        addresses = [[by_node[n] for n in s.devices] for s in plan.phase1.stages]
        shares = [list(s.shares) for s in plan.phase1.stages]
        training = self.job.training
        state = {k: v for k, v in p.model.state_dict().items() if k.startswith(("side.", "head."))}
        data = pack(state)
        train = asdict(self.job.train_config())
        calls = []
        for s, stage in enumerate(plan.phase1.stages):
            for r, address in enumerate(addresses[s]):
                spec = StageSpec(
                    job_id=self.job_id, model=self.job.model.name_or_path, quantization=self.job.model.quantization,
                    seed=training.seed, stage=s, replica=r, first=stage.first_layer, end=stage.end_layer,
                    side={"reduction_factor": training.reduction_factor,
                          "layers": list(training.side_layers) if training.side_layers is not None else None},
                    head=asdict(p.head), train=train, total_steps=total_steps, shares=shares, addresses=addresses,
                    pad_id=p.pad_id, codec=self.options.codec,
                    cache_precision=self.job.cache.precision if use_cache else None,
                    cache_keep=self.job.cache.keep, timeout_s=self.options.step_timeout_s)
                meta = {"spec": asdict(spec), "cache_directory": str(self.job.cache.directory)
                        if self.job.cache.directory else None}
                self.loaded.add(address)
                calls.append(self.stages.call(address, f"loading stage {s} ({stage.first_layer}-{stage.end_layer - 1})",
                                              self.stages.stub(address).Load(blob_stream(data, meta),
                                                                             timeout=LOAD_TIMEOUT_S)))
        replies = await asyncio.gather(*calls)
        for reply in replies:
            if reply.fingerprint != p.fingerprint:
                raise TrainingFailed(f"a device loaded {self.job.model.name_or_path} with other weights "
                                     f"(fingerprint {reply.fingerprint[:12]}, here {p.fingerprint[:12]}): every "
                                     f"device must have the same model installed")
        held = [r.held_bytes for r in replies]
        self.log(f"phase 1: {len(plan.phase1.stages)} stage(s) on {sum(len(a) for a in addresses)} device(s) "
                 f"loaded (largest stage {max(held) / 1e6:.0f} MB, slowest load {max(r.load_s for r in replies):.1f} s)")
        return addresses

    def _micro_request(self, plan: Plan, micro: list[dict], micro_items: list[list[int]], group: list[Encoded],
                       group_keys: list[str], stage: int, replica: int) -> list[stage_pb2.MicroBatch]:
        shares = tuple(plan.phase1.stages[stage].shares)
        last = stage == len(plan.phase1.stages) - 1
        out = []
        for index, (batch, rows) in enumerate(zip(micro, micro_items, strict=True)):
            start, stop = row_ranges(len(rows), shares)[replica]
            message = stage_pb2.MicroBatch(index=index, rows=len(rows))
            if start < stop:
                part = select_rows(batch, start, stop)
                if not last:
                    part = {k: v for k, v in part.items() if k != "labels"}  # labels go to the last stage only
                message.tensors = pack(part)
                message.sample_keys.extend(group_keys[i] for i in rows[start:stop])
                message.lengths.extend(n for i in rows[start:stop] for n in lengths_of(group[i]))
            out.append(message)
        return out

    async def phase1_step(self, plan: Plan, addresses, step: int, group: list[Encoded], group_keys: list[str],
                          holders: dict[str, list[str]] | None) -> tuple[float, list[dict]]:
        p, training = self.prepared, self.job.training
        m = min(plan.phase1.micro_batches, len(group))
        ranges = row_ranges(len(group), m)
        micro_items = [list(range(a, b)) for a, b in ranges]
        micro = [collate(group[a:b], p.pad_id, p.task) for a, b in ranges]
        family = p.model.side.spec.family
        loss_total = sum(loss_count(b, p.task, family) for b in micro)
        calls, who = [], []
        single = len(addresses) == 1  # one stage: each replica takes its optimiser step inside RunStep
        for s, stage_addresses in enumerate(addresses):
            for r, address in enumerate(stage_addresses):
                request = stage_pb2.RunStepRequest(job_id=self.job_id, step=step, loss_total=loss_total,
                                                   timeout_s=self.options.step_timeout_s, apply=single,
                                                   max_grad_norm=training.max_grad_norm)
                request.micro_batches.extend(self._micro_request(plan, micro, micro_items, group, group_keys, s, r))
                calls.append(self.stages.call(address, f"step {step} of stage {s}",
                                              self.stages.stub(address).RunStep(
                                                  request, timeout=self.options.step_timeout_s * 4)))
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
        if not single:  # the pipeline-wide norm: every stage clips by the same coefficient
            clip = clip_coefficient([norms[s] for s in sorted(norms)], training.max_grad_norm)
            await asyncio.gather(*(self.stages.call(a, f"optimiser step {step}", self.stages.stub(a).ApplyStep(
                stage_pb2.ApplyStepRequest(job_id=self.job_id, step=step, clip_coefficient=clip), timeout=60.0))
                for stage_addresses in addresses for a in stage_addresses))
        events = []
        node = {d.address: d.node_id for d in self.devices}
        for reply, (s, r, address) in zip(replies, who, strict=True):
            for event in json.loads(reply.events_json):
                events.append({**event, "stage": s, "replica": r, "device": node.get(address, address)})
        return loss, events

    async def gather_state(self, addresses: list[list[str]]) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for stage_addresses in addresses:
            address = stage_addresses[0]
            _, data = await self.stages.call(address, "reading the trained state", collect_blobs(
                self.stages.stub(address).GetState(stage_pb2.GetStateRequest(job_id=self.job_id, optimizer=True),
                                                   timeout=300.0)))
            state.update(unpack(data))
        return state

    # ---- phase 2 -------------------------------------------------------------------------------------
    async def run_phase2(self, plan: Plan, state: dict[str, torch.Tensor], holders: dict[str, list[str]],
                         stage_count: int, first_step: int, steps_per_epoch: int, total_steps: int) -> None:
        p, training = self.prepared, self.job.training
        by_node = {d.node_id: d.address for d in self.devices}
        shares = {by_node[n]: c for n, c in plan.phase2.step_shares.items() if c > 0}
        members = sorted(shares)
        counts = phase2_counts(len(p.train_items), training.batch_size, shares)
        epoch_counts = {d: sum(c[d] for c in counts) for d in members}
        weights = self._stage_weights(plan)
        assigned = assign_phase2(p.keys, holders, weights, epoch_counts)
        self.assigned, self.step_counts = assigned, counts
        node = {d.address: d.node_id for d in self.devices}
        self.assigned_by_node = {node[a]: keys for a, keys in assigned.items()}
        self.step_counts_by_node = [{node[a]: c for a, c in step.items()} for step in counts]
        spec_base = dict(
            job_id=self.job_id, model=self.job.model.name_or_path, quantization=self.job.model.quantization,
            seed=training.seed, side_spec=p.model.side.spec.to_dict(), head=asdict(p.head),
            train=asdict(self.job.train_config()),
            total_steps=total_steps, steps_done=first_step, members=members, fingerprint=p.fingerprint,
            tokenizer_fingerprint=p.backbone.tokenizer.fingerprint(), pad_id=p.pad_id,
            cache_precision=self.job.cache.precision, cache_keep=self.job.cache.keep,
            timeout_s=self.options.step_timeout_s)
        tensors = dict(state)
        if p.task == "lm":
            head = p.backbone.lm_head()
            tensors["lm_head.weight"] = head.weight
            if head.bias is not None:
                tensors["lm_head.bias"] = head.bias
            spec_base["lm_head_scale"] = head.scale
        data = pack(tensors)
        started = time.perf_counter()
        cache_directory = str(self.job.cache.directory) if self.job.cache.directory else None
        await asyncio.gather(*(self.stages.call(a, "loading phase 2", self.stages.stub(a).LoadPhase2(
            blob_stream(data, {"spec": asdict(Phase2Spec(**spec_base, rank=rank)),
                               "cache_directory": cache_directory}), timeout=LOAD_TIMEOUT_S))
            for rank, a in enumerate(members)))
        self.loaded.update(members)
        items = dict(zip(p.keys, p.train_items, strict=True))
        replies = await asyncio.gather(*(self.stages.call(a, "gathering the cache", self.stages.stub(a).GatherCache(
            stage_pb2.GatherCacheRequest(job_id=self.job_id, timeout_s=600.0, plan_json=json.dumps({
                "self": a, "stages": stage_count,
                "samples": [{**encoded_to_json(k, items[k]), "sources": holders[k]} for k in assigned[a]]})),
            timeout=1800.0)) for a in members))
        moved = sum(r.fetched_bytes for r in replies)
        kept = sum(r.local_bytes for r in replies)
        seconds = time.perf_counter() - started
        self.phase2_info = {"devices": members, "samples_per_device": {a: len(assigned[a]) for a in members},
                            "moved_bytes": moved, "kept_bytes": kept, "redistribution_s": seconds}
        self._message(f"phase 2: {len(members)} device(s); moved {moved / 1e6:.1f} MB of cached states "
                      f"(kept {kept / 1e6:.1f} MB in place) and the side network in {seconds:.1f} s")
        step = first_step
        for epoch in range(1, training.epochs):
            self._status(state="running", phase=2, epoch=epoch + 1)
            plan_steps = phase2_steps(assigned, counts, training.seed, epoch)
            began = time.perf_counter()
            streams = [self.stages.stub(a).TrainEpoch(stage_pb2.TrainEpochRequest(
                job_id=self.job_id, epoch=epoch, first_step=step,
                steps_json=json.dumps([{"keys": s[a], "loss_total": self._loss_total([items[k] for d in s
                                                                                      for k in s[d]])}
                                       for s in plan_steps])), timeout=self.options.step_timeout_s * len(plan_steps))
                for a in members]
            iterators = [s.__aiter__() for s in streams]
            for index in range(len(plan_steps)):
                reports = await asyncio.gather(*(self.stages.call(members[i], f"phase 2 epoch {epoch + 1}",
                                                                  anext(it)) for i, it in enumerate(iterators)))
                loss = sum(r.loss for r in reports)
                samples = sum(r.samples for r in reports)
                self._record_step(step, epoch, 2, loss, max(r.seconds for r in reports), samples,
                                  index + 1, len(plan_steps), allreduce_s=max(r.allreduce_s for r in reports))
                step += 1
            for it in iterators:  # the streams end after the last step
                await anext(it, None)
            self._end_epoch(epoch, 2, time.perf_counter() - began, len(p.train_items))
            state = await self.gather_state([[members[0]]])
            self._save_checkpoint(state, epoch + 1, step, 2)
            self._message(self.log_checkpoint)
        self.final_state = state

    def _stage_weights(self, plan: Plan) -> list[int]:
        """Bytes per sample each stage's shard holds, up to a common factor: its taps (+ the final state)."""
        from pac.pipeline.layers import LayerSlice

        spec = self.prepared.model.side.spec
        out = []
        for s, stage in enumerate(plan.phase1.stages):
            layers = LayerSlice(stage.first_layer, stage.end_layer, spec.stack_sizes)
            out.append(len(stage_taps(spec, layers)) + (1 if s == len(plan.phase1.stages) - 1 else 0))
        return out

    def _loss_total(self, group: list[Encoded]) -> int:
        p = self.prepared
        if p.task != "lm":
            return len(group)
        return loss_count(collate(group, p.pad_id, p.task), p.task, p.model.side.spec.family)

    # ---- progress ------------------------------------------------------------------------------------
    def _message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)
        else:
            self.log(text)

    def _record_step(self, step: int, epoch: int, phase: int, loss: float, seconds: float, samples: int,
                     index: int, steps: int, allreduce_s: float | None = None) -> None:
        self._stop_if_interrupted()
        self.history.steps.append({"step": step + 1, "epoch": epoch + 1, "phase": phase, "loss": loss,
                                   "seconds": seconds, "samples": samples, "allreduce_s": allreduce_s})
        if self.progress is not None:
            self.progress.update(str(phase), epoch + 1, self.job.training.epochs, index, steps, loss, samples)
        self._status(state="running", phase=phase, epoch=epoch + 1, step=step + 1, loss=loss)

    def _end_epoch(self, epoch: int, phase: int, seconds: float, samples: int) -> None:
        self.history.epochs.append({"epoch": epoch + 1, "phase": phase, "seconds": seconds,
                                    "samples_per_s": samples / seconds if seconds > 0 else None})

    # ---- everything ----------------------------------------------------------------------------------
    async def run(self) -> dict:
        watching = self._watch_interrupt()
        try:
            return await self._run()
        except asyncio.CancelledError:
            if self.interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            if watching:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    async def _run(self) -> dict:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        job, training = self.job, self.job.training
        started = time.perf_counter()
        self._status(state="preparing")
        self.prepared = p = await asyncio.to_thread(prepare, job, self.log)
        use_cache = (job.cache.precision != "none") if self.options.use_cache is None else self.options.use_cache
        plan = await self.make_plan(len(p.train_items), use_cache)
        plan.save(self.output_dir / "plan.json")
        self.plan = plan
        if use_cache and plan.phase2 is None and training.epochs > 1 and not job.cache.keep:
            use_cache = False  # the planner found no room for a phase-2 cache: writing one would be wasted
            self.log("no phase 2: the devices' disks hold no activation cache beside the phase-1 shards; "
                     "every epoch runs the backbone")
        steps_per_epoch = math.ceil(len(p.train_items) / training.batch_size)
        total_steps = steps_per_epoch * training.epochs
        phase1_epochs = 1 if use_cache and plan.phase2 is not None else training.epochs
        if self.progress is not None and hasattr(self.progress, "set_schedule"):
            from pac.cluster.report import PhaseSchedule

            phase2_guess = plan.phase2.epoch_s / steps_per_epoch if plan.phase2 and plan.phase2.epoch_s > 0 else None
            self.progress.set_schedule([PhaseSchedule("1", phase1_epochs, steps_per_epoch)] + (
                [PhaseSchedule("2", training.epochs - phase1_epochs, steps_per_epoch, phase2_guess)]
                if phase1_epochs < training.epochs else []))
        self.log(f"plan ({plan.strategy}): " + "; ".join(
            f"stage {i}: layers {s.first_layer}-{s.end_layer - 1} on {len(s.devices)} device(s)"
            for i, s in enumerate(plan.phase1.stages)) + f"; {plan.phase1.micro_batches} micro-batch(es) per step")
        leases = asyncio.get_running_loop().create_task(self.renew_leases(), name=f"leases of job {self.job_id}")
        try:
            addresses = await self.load_stages(plan, total_steps, use_cache)
            generator = torch.Generator().manual_seed(training.seed)
            torch.manual_seed(training.seed)
            holders: dict[str, list[str]] = {}
            step = 0
            state: dict[str, torch.Tensor] = {}
            key_of = {id(item): key for item, key in zip(p.train_items, p.keys, strict=True)}
            for epoch in range(phase1_epochs):
                began = time.perf_counter()
                groups = batches(p.train_items, training.batch_size, generator)
                for index, group in enumerate(groups):
                    tick = time.perf_counter()
                    loss, events = await self.phase1_step(plan, addresses, step, group,
                                                          [key_of[id(i)] for i in group],
                                                          holders if epoch == 0 and use_cache else None)
                    if step == min(2, steps_per_epoch - 1) and epoch == 0:
                        self.history.events = events  # a step after warm-up, for the timeline
                    self._record_step(step, epoch, 1, loss, time.perf_counter() - tick, len(group), index + 1,
                                      len(groups))
                    step += 1
                self._end_epoch(epoch, 1, time.perf_counter() - began, len(p.train_items))
                state = await self.gather_state(addresses)
                self._save_checkpoint(state, epoch + 1, step, 1)
                self._message(self.log_checkpoint)
            self.final_state = state
            self.phase2_info = None
            if phase1_epochs < training.epochs:
                await self.run_phase2(plan, state, holders, len(addresses), step, steps_per_epoch, total_steps)
        finally:
            leases.cancel()
            await self.release()
        self.training_s = time.perf_counter() - started  # to the end of the last epoch
        p.model.load_state_dict({k: v for k, v in self.final_state.items() if k.startswith(("side.", "head."))},
                                strict=False)
        return await asyncio.to_thread(self.finish, started)

    async def renew_leases(self) -> None:
        """Every quarter lease, tell each device holding the job that this controller is alive; a device
        that stops hearing it (the controller crashed, was killed, lost the network) releases the job."""
        lease = self.options.lease_s

        async def one(address: str) -> None:
            try:
                await self.stages.stub(address).Renew(stage_pb2.RenewRequest(job_id=self.job_id, lease_s=lease),
                                                      timeout=max(1.0, lease / 4))
            except grpc.aio.AioRpcError as error:
                log.debug("renewing job %s on %s: %s", self.job_id, address, error.details())

        while True:
            await asyncio.gather(*(one(a) for a in sorted(self.loaded)))
            await asyncio.sleep(lease / 4)

    async def release(self) -> None:
        async def one(address: str) -> None:
            try:
                await self.stages.stub(address).Release(stage_pb2.ReleaseRequest(
                    job_id=self.job_id, keep_cache=self.job.cache.keep), timeout=30.0)
            except grpc.aio.AioRpcError as error:
                log.warning("releasing job %s on %s failed: %s", self.job_id, address, error.details())

        await asyncio.gather(*(one(a) for a in sorted(self.loaded)))
        await self.stages.close()

    def finish(self, started: float) -> dict:
        from pac.adapter import save_adapter
        from pac.cluster.report import plot_losses, plot_timeline, write_metrics

        p = self.prepared
        save_adapter(p.model, self.output_dir / "adapter.safetensors", extra={"task": p.task})
        evaluation = {}
        if self.options.evaluate and p.eval_items:
            evaluation = evaluate(p.model, p.eval_items, p.task, p.pad_id)
        plot_losses(self.history.steps, self.output_dir / "loss.png", title=f"{p.backbone.name}: training loss")
        plot_timeline(self.history.events, self.output_dir / "timeline.png",
                      title="measured phase-1 step (one mini-batch)")
        total_s = time.perf_counter() - started  # evaluation and the plots included
        metrics = {
            "job_id": self.job_id, "model": p.backbone.name, "task": p.task, "strategy": self.plan.strategy,
            "devices": [asdict(d) for d in self.devices], "train_examples": len(p.train_items),
            "eval_examples": len(p.eval_items), "training_time_s": self.training_s, "total_time_s": total_s,
            "epoch_times_s": [e["seconds"] for e in self.history.epochs], "epochs": self.history.epochs,
            "final_loss": self.history.steps[-1]["loss"] if self.history.steps else None,
            "eval": evaluation, "phase2": self.phase2_info, "steps": self.history.steps,
            "plan": {"stages": [[s.first_layer, s.end_layer, list(s.devices), list(s.shares)]
                                for s in self.plan.phase1.stages], "micro_batches": self.plan.phase1.micro_batches},
        }
        write_metrics(self.output_dir / "metrics.json", metrics)
        self._status(state="finished", total_time_s=total_s)
        return metrics


def run_job(job, devices: list[Device], identity: Identity | None, output_dir: Path,
            options: RunOptions | None = None, progress=None, log_line: Callable[[str], None] = print,
            plan: Plan | None = None) -> tuple[dict, Controller]:
    controller = Controller(job, devices, identity, output_dir, options, progress, log_line, plan)
    try:
        metrics = asyncio.run(controller.run())
    except BaseException:
        controller._status(state="stopped", checkpoint=str(controller.checkpoint) if controller.checkpoint else None)
        raise
    return metrics, controller
