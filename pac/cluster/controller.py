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
from dataclasses import asdict
from pathlib import Path

import torch

from pac.cluster.checkpoint import Checkpoint, Position, job_identity, latest_checkpoint, remove_checkpoints
from pac.cluster.context import Device, JobContext, RunOptions
from pac.cluster.measure import measure_home, profile_sizes
from pac.cluster.phase1 import Phase1
from pac.cluster.phase2 import Phase2
from pac.cluster.prepare import Prepared, prepare
from pac.cluster.record import JobRecord
from pac.errors import ConfigError, TrainingFailed
from pac.net.stage_client import StageClient
from pac.planner.plan import Plan
from pac.planner.planner import plan_job
from pac.planner.profile import home_from_dict
from pac.security import Identity
from pac.train.loop import evaluate

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, job, devices: list[Device], identity: Identity | None, output_dir: Path,
                 options: RunOptions | None = None, progress=None, log_line: Callable[[str], None] = print,
                 plan: Plan | None = None) -> None:
        self.job, self.devices, self.identity = job, devices, identity
        self.options = options or RunOptions()
        self.output_dir = output_dir
        self.progress, self.log = progress, log_line
        self.plan = plan
        self.job_id = f"job-{os.getpid()}-{int(time.time())}"
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
    async def make_plan(self, samples: int, use_cache: bool, resuming: bool = False) -> Plan:
        if self.plan is not None:
            return self.plan
        if self.job.plan.file is not None:
            return Plan.load(self.job.plan.file)
        if resuming and (self.output_dir / "plan.json").exists():
            plan = Plan.load(self.output_dir / "plan.json")
            used = {n for s in plan.phase1.stages for n in s.devices} | set(plan.phase2.step_shares if plan.phase2
                                                                            else ())
            missing = sorted(used - {d.node_id for d in self.devices})
            if not missing:
                self.log("the stopped job's plan (plan.json): the same devices, the same result")
                return plan
            self.log(f"the stopped job's plan uses devices that are not here ({', '.join(missing)}): planning again")
        sizes = list(self.options.profile_batch_sizes or profile_sizes(self.job.training.batch_size,
                                                                        self.job.training.micro_batches))
        document = await measure_home(self.devices, self.identity, self.job, sizes, self.log)
        (self.output_dir / "profile.json").write_text(json.dumps(document, indent=1) + "\n")
        home = home_from_dict(document)
        strategy = self.options.strategy
        result = plan_job(home, self.job.to_training_job(samples, use_cache), strategy)
        return result.plan

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
        previous = self._previous_run()
        if not self.options.resume:
            self._refuse_stopped_job()
        self.record.update(state="preparing")
        self.prepared = p = await asyncio.to_thread(prepare, job, self.log)
        self.record.identity = job_identity(job, p.fingerprint)
        resume = self._resume_point(previous) if self.options.resume else None
        if resume is not None:
            await self._release_stopped({resume.job_id, previous.get("job_id", "")} - {""})
        self.ctx = JobContext(job, self.job_id, self.devices, self.stages, self.options, p, self.record,
                              self.loaded)
        use_cache = (job.cache.precision != "none") if self.options.use_cache is None else self.options.use_cache
        plan = self.plan = await self.make_plan(len(p.train_items), use_cache, resume is not None)
        plan.save(self.output_dir / "plan.json")
        if use_cache and plan.phase2 is None and training.epochs > 1 and not job.cache.keep:
            use_cache = False  # the planner found no room for a phase-2 cache: writing one would be wasted
            self.log("no phase 2: the devices' disks hold no activation cache beside the phase-1 shards; "
                     "every epoch runs the backbone")
        steps_per_epoch = math.ceil(len(p.train_items) / training.batch_size)
        phase1_epochs = 1 if use_cache and plan.phase2 is not None else training.epochs
        self._announce(plan, phase1_epochs, steps_per_epoch)
        leases = asyncio.get_running_loop().create_task(self.renew_leases(), name=f"leases of job {self.job_id}")
        completed = False
        try:
            state = await self._train(plan, resume, use_cache, phase1_epochs, steps_per_epoch)
            completed = True
        finally:
            leases.cancel()
            await self.release(keep=job.cache.keep or not completed)  # a stopped job's cache, for --resume
        self.training_s = time.perf_counter() - started  # to the end of the last epoch
        p.model.load_state_dict({k: v for k, v in state.items() if k.startswith(("side.", "head."))}, strict=False)
        return await asyncio.to_thread(self.finish, started)

    async def _train(self, plan: Plan, resume: Checkpoint | None, use_cache: bool, phase1_epochs: int,
                     steps_per_epoch: int) -> dict[str, torch.Tensor]:
        """Both phases, from the start or from `resume`'s checkpoint; returns the trained state."""
        training = self.job.training
        total = steps_per_epoch * training.epochs
        start = resume.position if resume else Position(1, 0, 0)
        state = resume.tensors() if resume else None
        holders = resume.holders_at(self.ctx.address_of()) if resume else {}
        if start.epoch >= training.epochs:
            return state  # the checkpoint is of the last epoch: only the evaluation and the outputs are left
        if start.phase == 2 and phase1_epochs >= training.epochs:
            raise ConfigError(f"{self.job.source}: the checkpoint {resume.directory} was taken in phase 2 (from the "
                              f"activation cache); resume it with the cache (without --no-cache)")
        step, stage_count = start.step, len(plan.phase1.stages)
        if start.phase == 1:  # the stages train phase 1, or serve the cache shards they wrote to phase 2
            phase1 = Phase1(self.ctx, plan, self._on_step)
            addresses = await phase1.load(total, use_cache, state, start.step)
            if start.epoch < phase1_epochs:
                state, holders, step = await phase1.run(addresses, phase1_epochs, steps_per_epoch, use_cache,
                                                        start, holders)
        if phase1_epochs < training.epochs:
            self.phase2 = Phase2(self.ctx, plan, self._on_step)
            state = await self.phase2.run(state, holders, stage_count, step, total,
                                          start if start.phase == 2 else None, resume.assigned if resume else None)
            self.assigned_by_node = self.phase2.assigned_by_node
            self.step_counts_by_node = self.phase2.step_counts_by_node
        return state

    # ---- resuming ------------------------------------------------------------------------------------
    def _refuse_stopped_job(self) -> None:
        """A stopped job's checkpoint is in the output directory: never mix it with a new job's."""
        found, _ = latest_checkpoint(self.output_dir / "checkpoint")
        if found is not None:
            raise ConfigError(f"{self.output_dir} holds the checkpoint of a stopped job ({found.directory.name}, "
                              f"epoch {found.position.epoch}, step {found.position.step}): continue it with "
                              f"--resume, or give this job another output directory")

    def _previous_run(self) -> dict:
        """status.json of the run before this one in the output directory; refused if it is still running."""
        try:
            status = json.loads((self.output_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        if status.get("state") in ("starting", "preparing", "running") and status.get("pid") != os.getpid():
            try:
                os.kill(int(status["pid"]), 0)
            except (OSError, KeyError, TypeError, ValueError):
                return status  # its controller is gone
            raise ConfigError(f"{self.output_dir}: job {status.get('job_id')} is running there (controller pid "
                              f"{status['pid']}); stop it first (Ctrl-C, or kill {status['pid']})")
        return status

    async def _release_stopped(self, job_ids: set[str]) -> None:
        """A killed controller's devices hold its run until their lease runs out: let it go now, keeping
        its caches (a device that holds no such run says so and nothing happens)."""
        async def one(address: str, job_id: str) -> None:
            try:
                await self.stages.release(address, True, job_id)
            except TrainingFailed as error:
                log.debug("job %s: %s", job_id, error)

        await asyncio.gather(*(one(d.address, j) for d in self.devices for j in sorted(job_ids)))

    def _resume_point(self, previous: dict) -> Checkpoint:
        """The newest sound checkpoint of this very job; its history becomes this run's, with this resume
        (`previous`: the stopped run's status, for the steps it took past the checkpoint) added."""
        checkpoint, problems = latest_checkpoint(self.output_dir / "checkpoint")
        for problem in problems:
            self.log(f"passed over a damaged checkpoint: {problem}")
        if checkpoint is None:
            raise ConfigError(f"{self.job.source}: nothing to resume in {self.output_dir}: no checkpoint"
                              + (" that checks" if problems else "") + "; start the job without --resume")
        checkpoint.check_job(self.record.identity, self.job.source)
        self.record.history.steps = list(checkpoint.history.get("steps", []))
        self.record.history.epochs = list(checkpoint.history.get("epochs", []))
        at = checkpoint.position
        stopped_at = previous.get("step") if isinstance(previous.get("step"), int) else None
        self.record.history.resumes = list(checkpoint.history.get("resumes", [])) + [{
            "checkpoint": checkpoint.directory.name, "step": at.step, "stopped_job_id": previous.get("job_id"),
            "stopped_state": previous.get("state"), "stopped_at_step": stopped_at,
            "steps_redone": max(0, stopped_at - at.step) if stopped_at is not None else None,
            "resumed_unix": time.time()}]
        self.record.checkpoint = checkpoint.directory
        self.record.update(resumed_from=str(checkpoint.directory), checkpoint=str(checkpoint.directory),
                           resumes=self.record.history.resumes)
        self.log(f"resuming from {checkpoint.directory} (phase {at.phase}, {at.epoch} epoch(s) and "
                 f"{at.in_epoch} step(s) done, {at.step} steps in all)")
        return checkpoint

    def _announce(self, plan: Plan, phase1_epochs: int, steps_per_epoch: int) -> None:
        """The plan in one line, and the phases' schedule to the progress display."""
        training = self.job.training
        if self.progress is not None and hasattr(self.progress, "set_schedule"):
            from pac.cluster.progress import PhaseSchedule

            phase2_guess = plan.phase2.epoch_s / steps_per_epoch if plan.phase2 and plan.phase2.epoch_s > 0 else None
            self.progress.set_schedule([PhaseSchedule("1", phase1_epochs, steps_per_epoch)] + (
                [PhaseSchedule("2", training.epochs - phase1_epochs, steps_per_epoch, phase2_guess)]
                if phase1_epochs < training.epochs else []))
        self.log(f"plan ({plan.strategy}): " + "; ".join(
            f"stage {i}: layers {s.first_layer}-{s.end_layer - 1} on {len(s.devices)} device(s)"
            for i, s in enumerate(plan.phase1.stages)) + f"; {plan.phase1.micro_batches} micro-batch(es) per step")

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

    async def release(self, keep: bool) -> None:
        async def one(address: str) -> None:
            try:
                await self.stages.release(address, keep)
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
        evaluation = {}
        if self.options.evaluate and p.eval_items:
            evaluation = evaluate(p.model, p.eval_items, p.task, p.pad_id)
        plot_losses(self.record.history.steps, self.output_dir / "loss.png", title=f"{p.backbone.name}: training loss")
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
            "eval": evaluation, "phase2": self.phase2.info if self.phase2 else None, "steps": self.record.history.steps,
            "resumes": self.record.history.resumes,
            "plan": {"stages": [[s.first_layer, s.end_layer, list(s.devices), list(s.shares)]
                                for s in self.plan.phase1.stages], "micro_batches": self.plan.phase1.micro_batches},
        }
        write_metrics(self.output_dir / "metrics.json", metrics)
        remove_checkpoints(self.output_dir / "checkpoint")  # the adapter supersedes them
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
