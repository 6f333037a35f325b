"""Resuming a stopped job: the output directory's newest checkpoint of the very same job, and the run it stopped.

docs/cluster.md, "Resume".
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pac.cluster.checkpoint import Checkpoint, latest_checkpoint
from pac.cluster.context import Device
from pac.cluster.record import JobRecord
from pac.errors import ConfigError, TrainingFailed
from pac.net.stage_client import StageClient

log = logging.getLogger(__name__)


def refuse_stopped_job(output_dir: Path) -> None:
    """A stopped job's checkpoint is in the output directory: never mix it with a new job's."""
    found, _ = latest_checkpoint(output_dir / "checkpoint")
    if found is not None:
        raise ConfigError(f"{output_dir} holds the checkpoint of a stopped job ({found.directory.name}, "
                          f"epoch {found.position.epoch}, step {found.position.step}): continue it with "
                          f"--resume, or give this job another output directory")


OUTPUTS = ("adapter.safetensors", "best.safetensors", "metrics.json", "plan.json", "profile.json", "loss.png",
           "timeline.png")  # what a job writes to its output directory (checkpoints and status.json aside)


def set_aside_outputs(output_dir: Path, previous: dict) -> Path | None:
    """A new job into a directory holding an earlier job's outputs: they move, whole, into
    OUT/previous/<its job id>/, so nothing of that job is ever read or reported as this one's.
    Returns where they went (None: there were none)."""
    found = [output_dir / name for name in OUTPUTS if (output_dir / name).exists()]
    if not found:
        return None
    name = str(previous.get("job_id") or f"run-{int(time.time())}")
    target = output_dir / "previous" / name
    suffix = 1
    while target.exists():
        suffix += 1
        target = output_dir / "previous" / f"{name}-{suffix}"
    target.mkdir(parents=True)
    for path in found:
        os.replace(path, target / path.name)
    return target


def previous_run(output_dir: Path) -> dict:
    """status.json of the run before this one in the output directory; refused if it is still running."""
    try:
        status = json.loads((output_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    if status.get("state") in ("starting", "preparing", "running") and status.get("pid") != os.getpid():
        try:
            os.kill(int(status["pid"]), 0)
        except (OSError, KeyError, TypeError, ValueError):
            return status  # its controller is gone
        raise ConfigError(f"{output_dir}: job {status.get('job_id')} is running there (controller pid "
                          f"{status['pid']}); stop it first (Ctrl-C, or kill {status['pid']})")
    return status


async def release_stopped(stages: StageClient, devices: list[Device], job_ids: set[str]) -> None:
    """A killed controller's devices hold its run until their lease runs out: let it go now, keeping
    its caches (a device that holds no such run says so and nothing happens)."""
    async def one(address: str, job_id: str) -> None:
        try:
            await stages.release(address, True, job_id)
        except TrainingFailed as error:
            log.debug("job %s: %s", job_id, error)

    await asyncio.gather(*(one(d.address, j) for d in devices for j in sorted(job_ids)))


def resume_point(output_dir: Path, source: str, record: JobRecord, previous: dict,
                 log_line: Callable[[str], None]) -> Checkpoint:
    """The newest sound checkpoint of this very job (`record.identity`); its history becomes this run's,
    with this resume (`previous`: the stopped run's status, for the steps it took past the checkpoint)."""
    checkpoint, problems = latest_checkpoint(output_dir / "checkpoint")
    for problem in problems:
        log_line(f"passed over a damaged checkpoint: {problem}")
    if checkpoint is None:
        raise ConfigError(f"{source}: nothing to resume in {output_dir}: no checkpoint"
                          + (" that checks" if problems else "") + "; start the job without --resume")
    checkpoint.check_job(record.identity, source)
    history = checkpoint.history
    record.history.steps = list(history.get("steps", []))
    record.history.epochs = list(history.get("epochs", []))
    record.history.faults = list(history.get("faults", []))
    record.history.evaluations = list(history.get("evaluations", []))
    at = checkpoint.position
    stopped_at = previous.get("step") if isinstance(previous.get("step"), int) else None
    record.history.resumes = list(history.get("resumes", [])) + [{
        "checkpoint": checkpoint.directory.name, "step": at.step, "stopped_job_id": previous.get("job_id"),
        "stopped_state": previous.get("state"), "stopped_at_step": stopped_at,
        "steps_redone": max(0, stopped_at - at.step) if stopped_at is not None else None,
        "resumed_unix": time.time()}]
    record.checkpoint = checkpoint.directory
    record.update(resumed_from=str(checkpoint.directory), checkpoint=str(checkpoint.directory),
                  resumes=record.history.resumes)
    log_line(f"resuming from {checkpoint.directory} (phase {at.phase}, {at.epoch} epoch(s) and "
             f"{at.in_epoch} step(s) done, {at.step} steps in all)")
    return checkpoint
