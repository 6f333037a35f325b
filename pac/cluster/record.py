"""What a running job records: status.json, its step and epoch history, checkpoints, progress lines."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pac.cluster.checkpoint import Commit, Position, write_checkpoint


@dataclass
class History:
    # {"step", "epoch", "phase", "loss", "seconds", "samples", "allreduce_s" (phase 2: the slowest device's)}
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "phase", "seconds", "samples_per_s"}
    events: list[dict] = field(default_factory=list)  # measured timeline of one phase-1 step
    # each resume: {"checkpoint", "step", "stopped_job_id", "stopped_state", "stopped_at_step", "steps_redone", ...}
    resumes: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)  # each lost device: pac.cluster.faults.Fault
    joins: list[dict] = field(default_factory=list)  # each device taken back: {"device", "address", "step", ...}
    evaluations: list[dict] = field(default_factory=list)  # after each epoch: {"epoch", "step", metric: value, ...}


class JobRecord:
    def __init__(self, job_id: str, output_dir: Path, devices: list, epochs: int, progress=None,
                 log_line: Callable[[str], None] = print) -> None:
        self.job_id, self.output_dir, self.epochs = job_id, output_dir, epochs
        self.progress, self.log = progress, log_line
        self.history = History()
        self.checkpoint: Path | None = None
        self.identity: dict[str, str] = {}  # pac.cluster.checkpoint.job_identity, once the job is prepared
        self.last_commit = Commit(Position(1, 0, 0))  # the newest checkpoint, kept here too
        self._recovering: tuple | None = None  # (fault, when it was noticed) until a step is taken without it
        self.status: dict[str, Any] = {"job_id": job_id, "pid": os.getpid(), "state": "starting",
                                       "output_dir": str(output_dir), "started_unix": time.time(),
                                       "devices": [f"{d.node_id} ({d.address})" for d in devices]}

    def update(self, **fields) -> None:
        from pac.cluster.report import write_metrics

        self.status.update(fields, updated_unix=time.time())
        write_metrics(self.output_dir / "status.json", self.status)

    def save_checkpoint(self, model, task: str, state: dict[str, torch.Tensor], position: Position,
                        holders: dict[str, list[str]] | None = None,
                        assigned: dict[str, list[str]] | None = None,
                        replicas: dict[str, list[str]] | None = None) -> None:
        """The adapter and optimiser state at `position`, written whole or not at all (pac.cluster.checkpoint);
        `holders` (sample key -> device per stage) and `assigned` (phase 2: device -> samples) by node id."""
        directory = write_checkpoint(self.output_dir / "checkpoint", model, task, state, position, self.job_id,
                                     self.identity, holders, assigned,
                                     {"steps": self.history.steps, "epochs": self.history.epochs,
                                      "resumes": self.history.resumes, "faults": self.history.faults,
                                      "joins": self.history.joins, "evaluations": self.history.evaluations},
                                     replicas)
        self.last_commit = Commit(position, state, dict(holders or {}), dict(assigned or {}), dict(replicas or {}))
        self.checkpoint = directory
        self.update(checkpoint=str(directory), checkpoint_epoch=position.epoch, checkpoint_step=position.step)
        where = f"epoch {position.epoch}" if not position.in_epoch else \
            f"step {position.in_epoch} of epoch {position.epoch + 1}"
        self.message(f"checkpoint after {where}: {directory}")

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)
        else:
            self.log(text)

    def step(self, step: int, epoch: int, phase: int, loss: float, seconds: float, samples: int,
             index: int, steps: int, allreduce_s: float | None = None) -> None:
        self.history.steps.append({"step": step + 1, "epoch": epoch + 1, "phase": phase, "loss": loss,
                                   "seconds": seconds, "samples": samples, "allreduce_s": allreduce_s})
        if self.progress is not None:
            self.progress.update(str(phase), epoch + 1, self.epochs, index, steps, loss, samples)
        if self._recovering is not None:  # the first step without the lost device: recovered
            fault, noticed = self._recovering
            fault["recovered_s"], self._recovering = time.perf_counter() - noticed, None
            self.message(f"recovered in {fault['recovered_s']:.1f} s without {fault['device']}; "
                         f"{fault['steps_redone']} step(s) redone")
        self.update(state="running", phase=phase, epoch=epoch + 1, epochs=self.epochs, step=step + 1,
                    epoch_step=index, epoch_steps=steps, loss=loss, faults=self.history.faults)

    def add_join(self, entry: dict) -> None:
        self.history.joins.append(entry)
        self.update(joins=self.history.joins)

    def add_fault(self, fault, noticed: float) -> None:
        """A lost device (pac.cluster.faults.Fault), noticed at `noticed` (time.perf_counter)."""
        entry = fault.to_dict()
        self.history.faults.append(entry)
        self._recovering = (entry, noticed)
        self.update(faults=self.history.faults)

    def add_evaluation(self, entry: dict) -> None:
        """{"epoch", "step", "eval": metrics, "validation": metrics} after an epoch (a redone epoch replaces it)."""
        from pac.metrics import main_metric

        self.history.evaluations = [e for e in self.history.evaluations if e["epoch"] != entry["epoch"]]
        self.history.evaluations.append(entry)
        self.update(evaluations=self.history.evaluations)
        said = [f"{which} {metric} {entry[which][metric]:.4f}" for which in ("validation", "eval")
                if which in entry and (metric := main_metric(entry[which]))]
        self.message(f"after epoch {entry['epoch']}: " + ", ".join(said))

    def end_epoch(self, epoch: int, phase: int, seconds: float, samples: int) -> None:
        self.history.epochs.append({"epoch": epoch + 1, "phase": phase, "seconds": seconds,
                                    "samples_per_s": samples / seconds if seconds > 0 else None})
