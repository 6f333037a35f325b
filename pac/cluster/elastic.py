"""The controller's part that keeps a job going while devices leave and come back (docs/cluster.md,
"Devices that leave"): watching the devices, recovering from a lost one, taking one back.

`Elastic` is a part of pac.cluster.controller.Controller, kept apart to keep each file one subject.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pac.cluster.checkpoint import Commit, Position
from pac.cluster.context import JobContext
from pac.cluster.faults import DeviceLost, DevicesBack, Fault, answering, lost_among, restricted, watch
from pac.cluster.measure import measure_home
from pac.cluster.resume import release_stopped
from pac.errors import PacError, TrainingFailed
from pac.net.stage_client import StageClient
from pac.planner.errors import InfeasibleError
from pac.planner.plan import Plan
from pac.planner.planner import plan_job
from pac.planner.profile import home_from_dict

log = logging.getLogger(__name__)


class Elastic:
    def _new_attempt(self, first: bool = False) -> None:
        """A run of the job on the devices (again, after a device was lost: a new job id on the devices, so
        nothing of the abandoned step can mix with the next)."""
        if not first:
            self.attempt += 1
            self.job_id = f"{self.record.job_id}-{self.attempt}"
            self.stages = StageClient(self.job_id, {d.address: d.node_id for d in self.devices}, self.identity)
            self.loaded = set()
        if self.phase2 is not None and self.phase2.info:
            self.phase2_runs.append(self.phase2.info)  # the abandoned run's redistribution, for metrics.json
        self.phase2 = None
        self.ctx = JobContext(self.job, self.job_id, self.devices, self.stages, self.options, self.prepared,
                              self.record, self.loaded, on_epoch_end=self._epoch_evaluation)

    async def _watched(self, training):
        """Await `training`, watching the devices that hold it: a lost one (or a failed step whose device
        does not answer) cancels it with DeviceLost."""
        if self.options.deadline_s <= 0:
            return await training
        main, found = asyncio.current_task(), []

        async def watching() -> None:
            found.append(await watch(self.stages, lambda: [d for d in self.devices if d.address in self.loaded],
                                     self.options.deadline_s))
            main.cancel()

        watcher = asyncio.get_running_loop().create_task(watching(), name=f"watch of job {self.job_id}")
        try:
            return await training
        except asyncio.CancelledError:
            if not found or self.interrupted:
                raise
            main.uncancel()
            raise found[0] from None
        except TrainingFailed:
            if self.interrupted:
                raise
            watcher.cancel()
            lost = await lost_among(self.stages, self.devices, self.options.deadline_s)
            if lost is None:
                raise  # every device answers: the job's own failure
            raise lost from None
        finally:
            watcher.cancel()

    async def _recover(self, lost: DeviceLost, plan: Plan, use_cache: bool,
                       steps_per_epoch: int) -> tuple[Plan, Commit]:
        """Go on without `lost`: the newest commit, the devices that remain, a plan over them."""
        record, node = self.record, lost.device.node_id
        steps = len(record.history.steps)
        fault = Fault(node, lost.device.address, lost.why, int(record.status.get("phase", 1)), steps, time.time())
        record.message(f"{lost}; going on without it")
        commit = await self._commit_after(lost, steps_per_epoch)
        fault.resumed_from_step, fault.steps_redone = commit.position.step, max(0, steps - commit.position.step)
        del record.history.steps[commit.position.step:]
        record.history.epochs = [e for e in record.history.epochs if e["epoch"] <= commit.position.epoch]
        self.devices = [d for d in self.devices if d.node_id != node]
        self.lost.append(lost.device)
        self.loaded.discard(lost.device.address)
        if not self.devices:
            raise TrainingFailed(f"{lost}, and no other device is left; the checkpoint is kept")
        new = await self._replan(lost, commit, use_cache)
        same_stages = [(s.first_layer, s.end_layer) for s in new.phase1.stages] == \
            [(s.first_layer, s.end_layer) for s in plan.phase1.stages]
        if commit.position.phase == 1 and not same_stages:
            commit.holders = {}  # other stages cache other states: what the old ones cached is recomputed
        # the survivors let the abandoned run go; their caches stay where the next run reads them (phase 2:
        # those holding records serve them to the new members, pac.cluster.phase2)
        using = {d.address for d in self.devices
                 if d.node_id in new.used() | set(commit.assigned) | {c for cs in commit.replicas.values() for c in cs}}
        await self.release(self.job.cache.keep or (using if commit.position.phase == 2 or same_stages else False))
        fault.replanned = new.line()
        self._new_attempt()
        self.record.update(devices=[f"{d.node_id} ({d.address})" for d in self.devices])
        record.add_fault(fault, lost.noticed)
        return new, commit

    async def _commit_after(self, lost: DeviceLost | None, steps_per_epoch: int) -> Commit:
        """In phase 2 a surviving member's state (each holds all of it), else phase 1's last checkpoint."""
        members = self.phase2.members if self.phase2 is not None else []
        for address in (a for a in members if lost is None or a != lost.device.address):
            try:
                state, steps = await self.stages.get_state_steps(address, 4 * self.options.deadline_s)
            except TrainingFailed as error:
                log.warning("job %s: %s", self.job_id, error)
                continue
            epoch, in_epoch = divmod(steps, steps_per_epoch)
            return Commit(Position(2, epoch, steps, in_epoch), state, {}, dict(self.phase2.assigned_by_node),
                          dict(self.phase2.replicas_by_node))
        return self.record.last_commit

    async def _replan(self, lost: DeviceLost | None, commit: Commit, use_cache: bool) -> Plan:
        """A plan over the devices that remain; if they cannot hold the job, stop with a checkpoint."""
        p = self.prepared
        try:
            if self.document is None:
                self.document = await measure_home(self.devices, self.identity, self.job, self._profile_sizes(),
                                                   self.log)
            document = restricted(self.document, {d.node_id for d in self.devices})
            result = plan_job(home_from_dict(document),
                              self.job.to_training_job(len(p.train_items), use_cache, **p.tokens()),
                              self.options.strategy)
        except InfeasibleError as error:
            if commit.state is not None:
                self.record.save_checkpoint(p.model, p.task, commit.state, commit.position, commit.holders,
                                            commit.assigned, commit.replicas)
            raise TrainingFailed(f"without {lost.device.node_id if lost else 'the lost devices'} the devices that "
                                 f"remain cannot hold the job: "
                                 f"{error}. The checkpoint is kept: bring the device back (or add one) and run "
                                 f"`pacctl train JOB --resume`") from None
        return result.plan

    async def _scout(self) -> None:
        """Every `scout_s`, the job's devices found anew (mDNS, the listed addresses): one the job has
        never had is taken in at the next phase-2 epoch's end (the phone came home)."""
        while True:
            await asyncio.sleep(self.options.scout_s)
            try:
                found = await self.options.find_devices()
            except (PacError, OSError) as error:  # finding devices again must not stop the job
                log.warning("job %s: looking for devices: %s", self.job_id, error)
                continue
            known = {d.node_id for d in self.devices + self.lost}
            self.newcomers = [d for d in found if d.node_id not in known]

    async def _check_back(self) -> None:
        """At a phase-2 epoch's end: a lost device that answers again, or one new to the job, ends this
        run to take it in."""
        if not self.job.devices.rejoin or not (self.lost or self.newcomers):
            return
        back = await answering(self.stages, self.lost, max(1.0, self.options.deadline_s / 2)) if self.lost else []
        if back or self.newcomers:
            raise DevicesBack(back, self.newcomers)

    async def _take_back(self, back: DevicesBack, plan: Plan, use_cache: bool,
                         steps_per_epoch: int) -> tuple[Plan, Commit]:
        """Go on with the devices that came back or joined: the members' state, a plan over all (a new
        device profiled first), a new run."""
        commit = await self._commit_after(None, steps_per_epoch)
        for device in back.devices + back.joined:
            self.record.add_join({"device": device.node_id, "address": device.address, "new": device in back.joined,
                                  "step": commit.position.step, "noticed_unix": time.time()})
        self.lost = [d for d in self.lost if d not in back.devices]
        self.devices = self.devices + back.devices + back.joined
        self.newcomers = []
        if back.joined:
            self.document = None  # the home's profile lacks them: measured again (the others' are stored)
        await self.release(True)  # every member's cache serves the next run
        new = await self._replan(None, commit, use_cache)
        earlier = {self.record.job_id} | {f"{self.record.job_id}-{n}" for n in range(1, self.attempt + 1)}
        self._new_attempt()
        self.record.update(devices=[f"{d.node_id} ({d.address})" for d in self.devices])
        await release_stopped(self.stages, back.devices, earlier)  # they may still hold a run they left
        self.log(f"taking in {', '.join(d.node_id for d in back.devices + back.joined)} from step "
                 f"{commit.position.step}; " + new.line())
        return new, commit
