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
import dataclasses
import json
import logging
import math
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from pac.cluster.checkpoint import Commit, Position, job_identity, remove_checkpoints
from pac.cluster.context import Device, JobContext, RunOptions
from pac.cluster.elastic import Elastic
from pac.cluster.evaluation import EpochEvaluation, StopEarly
from pac.cluster.faults import DeviceLost, DevicesBack
from pac.cluster.measure import measure_home, profile_sizes
from pac.cluster.memory import peak_rss_bytes, process_overhead
from pac.cluster.phase1 import Phase1
from pac.cluster.phase2 import Phase2
from pac.cluster.prepare import Prepared, prepare
from pac.cluster.record import JobRecord
from pac.cluster.resume import (
    previous_run,
    refuse_stopped_job,
    release_stopped,
    resume_point,
    set_aside_outputs,
)
from pac.errors import ConfigError, TrainingFailed
from pac.net.stage_client import StageClient
from pac.planner.plan import Plan
from pac.planner.planner import plan_job
from pac.planner.profile import home_from_dict
from pac.security import Identity
from pac.techniques.top import load_trained, trained_tensors

log = logging.getLogger(__name__)


class Controller(Elastic):
    def __init__(self, job, devices: list[Device], identity: Identity | None, output_dir: Path,
                 options: RunOptions | None = None, progress=None, log_line: Callable[[str], None] = print,
                 plan: Plan | None = None) -> None:
        self.job, self.devices, self.identity = job, devices, identity
        self.options = options or RunOptions()
        self.output_dir = output_dir
        self.progress, self.log = progress, log_line
        self.plan = plan
        # unique even for two jobs one process starts within a second (a resume right after a stop)
        self.job_id = f"job-{os.getpid()}-{int(time.time())}-{secrets.token_hex(3)}"
        self.stages = StageClient(self.job_id, {d.address: d.node_id for d in devices}, identity)
        self.loaded: set[str] = set()
        self.record = JobRecord(self.job_id, output_dir, devices, job.training.epochs, progress, log_line)
        self.interrupted = False
        self.prepared: Prepared | None = None
        self.ctx: JobContext | None = None
        self.phase2: Phase2 | None = None
        self.assigned_by_node: dict[str, list[str]] = {}  # phase 2: node -> its samples' keys
        self.step_counts_by_node: list[dict[str, int]] = []  # phase 2: per step, node -> samples
        self.training_s = 0.0
        self.attempt, self.document = 0, None  # runs after lost devices; the home's profile, once measured
        self.lost: list[Device] = []  # devices lost on the way (taken back if they answer again)
        self.newcomers: list[Device] = []  # devices new to the job, found while it runs (taken in)
        self.estimates_apply = True  # the plan's time estimates are this job's (not a plan for other sizes)
        self.phase2_runs: list[dict] = []  # each earlier phase-2 run's redistribution (devices lost or back)
        self.evaluation: EpochEvaluation | None = None  # scores the evaluation data after each epoch
        self.overhead_bytes = 0  # this process before any weight (the planner counts the controller's memory)
        self.stopped_early = False  # training.patience ran out before the last epoch

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

    # ---- the plan ------------------------------------------------------------------------------------
    def _profile_sizes(self) -> list[int]:
        training = self.job.training
        return list(self.options.profile_batch_sizes or profile_sizes(training.batch_size, training.micro_batches))

    async def make_plan(self, samples: int, use_cache: bool, resuming: bool = False) -> Plan:
        if self.plan is not None or self.job.plan.file is not None:
            return self._given(self.plan or Plan.load(self.job.plan.file), samples, use_cache)
        if resuming and (self.output_dir / "plan.json").exists():
            plan = Plan.load(self.output_dir / "plan.json")
            missing = sorted(plan.used() - {d.node_id for d in self.devices})
            if not missing:
                self.log("the stopped job's plan (plan.json): the same devices, the same result")
                return plan
            self.log(f"the stopped job's plan uses devices that are not here ({', '.join(missing)}): planning again")
        document = self.document = await measure_home(self.devices, self.identity, self.job,
                                                      self._profile_sizes(), self.log)
        (self.output_dir / "profile.json").write_text(json.dumps(document, indent=1) + "\n")
        home = home_from_dict(document)
        strategy = self.options.strategy
        job = dataclasses.replace(self.job.to_training_job(samples, use_cache, **self.prepared.tokens()),
                                  controller_overhead_bytes=self.overhead_bytes)
        result = plan_job(home, job, strategy)
        return result.plan

    def _given(self, plan: Plan, samples: int, use_cache: bool) -> Plan:
        """A plan made before (`--plan`, [plan] file): refused if it splits another mini-batch; its time
        estimates dropped if it was made for other sizes, saying which."""
        where = self.job.plan.file if self.plan is None else "the plan given"
        unusable, estimates = plan.differences(self.job.to_training_job(samples, use_cache,
                                                                        **self.prepared.tokens()))
        if plan.model != self.job.model.name_or_path:
            unusable.insert(0, f"model {plan.model!r} (the job: {self.job.model.name_or_path!r})")
        if unusable:
            raise ConfigError(f"{where} was made for another job: {', '.join(unusable)}; plan again for this "
                              f"job (pacctl plan --batch-size {self.job.training.batch_size})")
        if estimates:
            self.estimates_apply = False
            self.log(f"{where} was made for {', '.join(estimates)}: its time estimates are not used (the "
                     "progress line measures this job's)")
        return plan

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
        previous = previous_run(self.output_dir)
        if not self.options.resume:
            refuse_stopped_job(self.output_dir)
            aside = set_aside_outputs(self.output_dir, previous)
            if aside is not None:
                self.log(f"the outputs of the job before in {self.output_dir} moved to {aside}")
        self.record.update(state="preparing")
        self.overhead_bytes = await asyncio.to_thread(process_overhead)
        self.prepared = p = await asyncio.to_thread(prepare, job, self.log)
        self.record.identity = job_identity(job, p.fingerprint)
        evaluation = EpochEvaluation(p, job.cache.precision, job.model.quantization, self.output_dir,
                                     job.training.patience)
        self.evaluation = evaluation if self.options.evaluate and evaluation.wanted else None
        evaluation.log = self.log
        commit = Commit(Position(1, 0, 0))
        if self.options.resume:
            checkpoint = resume_point(self.output_dir, job.source, self.record, previous, self.log)
            await release_stopped(self.stages, self.devices, {checkpoint.job_id, previous.get("job_id", "")} - {""})
            commit = checkpoint.commit()
            if self.evaluation is not None:
                self.evaluation.resumed(self.record.history.evaluations)
        self.record.last_commit = commit
        self._new_attempt(first=True)
        wanted = (job.cache.precision != "none") if self.options.use_cache is None else self.options.use_cache
        plan = self.plan = await self.make_plan(len(p.train_items), wanted, self.options.resume)
        steps_per_epoch = math.ceil(len(p.train_items) / training.batch_size)
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self.renew_leases(), name=f"leases of job {self.job_id}")]
        if self.options.find_devices is not None and job.devices.rejoin:
            helpers.append(loop.create_task(self._scout(), name=f"devices of job {self.job_id}"))
        completed = False
        try:
            while True:  # once, and again without each device that is lost on the way
                plan.save(self.output_dir / "plan.json")
                use_cache, phase1_epochs = self._phases(plan, wanted, steps_per_epoch)
                try:
                    state = await self._watched(self._train(plan, commit, use_cache, phase1_epochs, steps_per_epoch))
                    break
                except StopEarly:
                    state, self.stopped_early = {}, True
                    break
                except DeviceLost as lost:
                    plan, commit = await self._recover(lost, plan, wanted, steps_per_epoch)
                except DevicesBack as back:
                    plan, commit = await self._take_back(back, plan, wanted, steps_per_epoch)
                self.plan = plan
            completed = True
        finally:
            for helper in helpers:
                helper.cancel()
            await self.release(keep=job.cache.keep or not completed)  # a stopped job's cache, for --resume
        self.training_s = time.perf_counter() - started  # to the end of the last epoch
        best = self.evaluation.best_state() if self.evaluation is not None else None
        state = best if best is not None else state  # with a validation split: the best epoch's weights
        load_trained(p.model, state)
        return await asyncio.to_thread(self.finish, started)

    def _phases(self, plan: Plan, use_cache: bool, steps_per_epoch: int) -> tuple[bool, int]:
        """Whether the job caches, and its phase-1 epochs, on `plan`; said on the terminal."""
        training = self.job.training
        if use_cache and plan.phase2 is None and training.epochs > 1 and not self.job.cache.keep:
            use_cache = False  # the plan has no phase 2: writing a cache would be wasted
            self.log(f"no phase 2: the {plan.strategy} baseline trains every epoch through the backbone"
                     if plan.strategy not in ("pac", "fixed") else
                     "no phase 2: the devices' disks hold no activation cache beside the phase-1 shards; "
                     "every epoch runs the backbone")
        phase1_epochs = 1 if use_cache and plan.phase2 is not None else training.epochs
        self._announce(plan, phase1_epochs, steps_per_epoch)
        return use_cache, phase1_epochs

    async def _train(self, plan: Plan, commit: Commit, use_cache: bool, phase1_epochs: int,
                     steps_per_epoch: int) -> dict[str, torch.Tensor]:
        """Both phases from `commit` (the start, a checkpoint, or where a lost device left the job);
        returns the trained state."""
        training = self.job.training
        total = steps_per_epoch * training.epochs
        start, state = commit.position, commit.state
        holders = commit.holders_at(self.ctx.address_of())
        if start.epoch >= training.epochs:
            return state  # the checkpoint is of the last epoch: only the evaluation and the outputs are left
        if start.phase == 2 and phase1_epochs >= training.epochs:
            raise ConfigError(f"{self.job.source}: the job stands in phase 2 (from the activation cache) and "
                              f"cannot go on without the cache (resume it without --no-cache)")
        step, stage_count = start.step, len(plan.phase1.stages)
        if start.phase == 1:  # the stages train phase 1, or serve the cache shards they wrote to phase 2
            phase1 = Phase1(self.ctx, plan, self._on_step)
            addresses = await phase1.load(total, use_cache, state, start.step)
            if self.evaluation is not None:  # its records, computed by the stages (this machine holds no backbone)
                await self.evaluation.prefill(lambda items, keys, cache: phase1.evaluation_records(addresses, items,
                                                                                                  keys, cache))
            if start.epoch < phase1_epochs:
                state, holders, step = await phase1.run(addresses, phase1_epochs, steps_per_epoch, use_cache,
                                                        start, holders)
        if phase1_epochs < training.epochs:
            self.phase2 = Phase2(self.ctx, plan, self._on_step)
            self.phase2.on_epoch = self._check_back
            state = await self.phase2.run(state, holders, stage_count, step, total,
                                          start if start.phase == 2 else None, commit.assigned, commit.replicas)
            self.assigned_by_node = self.phase2.assigned_by_node
            self.step_counts_by_node = self.phase2.step_counts_by_node
        return state

    def _announce(self, plan: Plan, phase1_epochs: int, steps_per_epoch: int) -> None:
        """The plan in one line, and the phases' schedule to the progress display."""
        training = self.job.training
        if self.progress is not None and hasattr(self.progress, "set_schedule"):
            from pac.cluster.progress import PhaseSchedule

            phase2_guess = plan.phase2.epoch_s / steps_per_epoch if plan.phase2 and plan.phase2.epoch_s > 0 and \
                self.estimates_apply else None
            self.progress.set_schedule([PhaseSchedule("1", phase1_epochs, steps_per_epoch)] + (
                [PhaseSchedule("2", training.epochs - phase1_epochs, steps_per_epoch, phase2_guess)]
                if phase1_epochs < training.epochs else []))
        self.log(plan.line())
        idle = [d.node_id for d in self.devices if d.node_id not in plan.used()]
        if idle:
            why = {"pac": f"the planner's plan is fastest without them: {plan.reason}",
                   "fixed": "the plan given does not use them"}.get(plan.strategy, f"the {plan.strategy} baseline")
            self.log(f"not used: {', '.join(idle)} ({why})")

    async def _epoch_evaluation(self, epoch: int, step: int, state: dict[str, torch.Tensor]) -> None:
        """After each epoch's checkpoint: the evaluation data and validation split scored with that epoch's
        state; raises StopEarly when `training.patience` epochs have passed without a better validation score."""
        if self.evaluation is None:
            return
        self.record.add_evaluation(await self.evaluation.after_epoch(epoch, step, state))
        if self.evaluation.should_stop(epoch, self.job.training.epochs):
            self.log(f"stopping after epoch {epoch}: no better validation score for {self.job.training.patience} "
                     f"epochs; the adapter is epoch {self.evaluation.best['epoch']}'s")
            raise StopEarly

    def _on_step(self, *args, **kwargs) -> None:
        """A step ended (phase 1 or 2): stop here if Ctrl-C was pressed, else record it."""
        self._stop_if_interrupted()
        self.record.step(*args, **kwargs)

    async def renew_leases(self) -> None:
        """Every quarter lease, tell each device holding the job that this controller is alive; a device
        that stops hearing it (the controller crashed, was killed, lost the network) releases the job."""
        lease = self.options.lease_s

        async def one(address: str) -> None:
            try:
                await self.stages.renew(address, lease)
            except TrainingFailed as error:
                log.debug("job %s: %s", self.job_id, error)

        while True:
            await asyncio.gather(*(one(a) for a in sorted(self.loaded)))
            await asyncio.sleep(lease / 4)

    async def release(self, keep: bool | set[str]) -> None:
        """Every device lets the job go, keeping its caches if `keep` (or if it is among `keep`)."""
        async def one(address: str) -> None:
            try:
                await self.stages.release(address, keep if isinstance(keep, bool) else address in keep)
            except TrainingFailed as error:
                log.warning("job %s: %s", self.job_id, error)

        await asyncio.gather(*(one(a) for a in sorted(self.loaded)))
        await self.stages.close()

    def finish(self, started: float) -> dict:
        from pac.adapter import save_adapter
        from pac.cluster.plots import plot_losses, plot_timeline
        from pac.cluster.report import write_metrics

        p = self.prepared
        save_adapter(p.model, self.output_dir / "adapter.safetensors",
                     extra={"task": p.task, "quantization": self.job.model.quantization})
        evaluation, best = {}, None
        if self.evaluation is not None:
            last_step = self.record.history.steps[-1]["step"] + 1 if self.record.history.steps else 0
            trained = trained_tensors(p.model)
            evaluation = self.evaluation.final(last_step) or (self.evaluation.score(trained) if p.eval_items else {})
            best = self.evaluation.best["epoch"] if self.evaluation.best else None
            self.evaluation.close()
        plot_losses(self.record.history.steps, self.output_dir / "loss.png", title=f"{p.backbone.name}: training loss",
                    faults=self.record.history.faults, evaluations=self.record.history.evaluations)
        plot_timeline(self.record.history.events, self.output_dir / "timeline.png",
                      title="measured phase-1 step (one mini-batch)")
        total_s = time.perf_counter() - started  # evaluation and the plots included
        metrics = {
            "job_id": self.job_id, "model": p.backbone.name, "task": p.task, "strategy": self.plan.strategy,
            "quantization": self.job.model.quantization,
            "devices": [asdict(d) for d in self.devices], "train_examples": len(p.train_items),
            "eval_examples": len(p.eval_items), "training_time_s": self.training_s, "total_time_s": total_s,
            "epoch_times_s": [e["seconds"] for e in self.record.history.epochs], "epochs": self.record.history.epochs,
            "final_loss": self.record.history.steps[-1]["loss"] if self.record.history.steps else None,
            "eval": evaluation, "phase2": self.phase2.info if self.phase2 else None,
            "phase2_runs": self.phase2_runs + ([self.phase2.info] if self.phase2 and self.phase2.info else []),
            "steps": self.record.history.steps,
            "resumes": self.record.history.resumes, "faults": self.record.history.faults,
            "joins": self.record.history.joins, "evaluations": self.record.history.evaluations,
            "best_epoch": best, "stopped_early": self.stopped_early,
            "controller_peak_rss_bytes": peak_rss_bytes(),
            # of training_time_s: the evaluation records through the stages and each epoch's scoring
            "evaluation_s": self.evaluation.seconds if self.evaluation is not None else 0.0,
            "plan": {"stages": [[s.first_layer, s.end_layer, list(s.devices), list(s.shares)]
                                for s in self.plan.phase1.stages], "micro_batches": self.plan.phase1.micro_batches},
        }
        write_metrics(self.output_dir / "metrics.json", metrics)
        remove_checkpoints(self.output_dir / "checkpoint")  # the adapter supersedes them
        (self.output_dir / "best.safetensors").unlink(missing_ok=True)  # and the best epoch's weights
        self.record.checkpoint = None
        self.record.update(state="finished", total_time_s=total_s, checkpoint=None)
        return metrics


def run_training(job, devices: list[Device], identity: Identity | None, output_dir: Path,
                 options: RunOptions | None = None, progress=None, log_line: Callable[[str], None] = print,
                 plan: Plan | None = None) -> tuple[dict, Controller]:
    controller = Controller(job, devices, identity, output_dir, options, progress, log_line, plan)
    try:
        metrics = asyncio.run(controller.run())
    except BaseException:
        if controller.record.status["state"] != "starting":  # a job refused at the start writes nothing
            checkpoint = controller.record.checkpoint
            controller.record.update(state="stopped", checkpoint=str(checkpoint) if checkpoint else None)
        raise
    return metrics, controller
