"""What a running job records: status.json, its step and epoch history, checkpoints, progress lines."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class History:
    # {"step", "epoch", "phase", "loss", "seconds", "samples", "allreduce_s" (phase 2: the slowest device's)}
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "phase", "seconds", "samples_per_s"}
    events: list[dict] = field(default_factory=list)  # measured timeline of one phase-1 step


class JobRecord:
    def __init__(self, job_id: str, output_dir: Path, devices: list, epochs: int, progress=None,
                 log_line: Callable[[str], None] = print) -> None:
        self.job_id, self.output_dir, self.epochs = job_id, output_dir, epochs
        self.progress, self.log = progress, log_line
        self.history = History()
        self.checkpoint: Path | None = None
        self.status: dict[str, Any] = {"job_id": job_id, "pid": os.getpid(), "state": "starting",
                                       "output_dir": str(output_dir), "started_unix": time.time(),
                                       "devices": [f"{d.node_id} ({d.address})" for d in devices]}

    def update(self, **fields) -> None:
        from pac.cluster.report import write_metrics

        self.status.update(fields, updated_unix=time.time())
        write_metrics(self.output_dir / "status.json", self.status)

    def save_checkpoint(self, model, task: str, state: dict[str, torch.Tensor], epoch: int, step: int,
                        phase: int) -> None:
        """The adapter and optimiser state after `epoch`, written whole or not at all; said on the terminal."""
        from safetensors.torch import save_file

        from pac.adapter import save_adapter

        directory = self.output_dir / "checkpoint"
        directory.mkdir(parents=True, exist_ok=True)
        model.load_state_dict({k: v for k, v in state.items() if k.startswith(("side.", "head."))}, strict=False)
        save_adapter(model, directory / "adapter.safetensors", extra={"task": task})
        optimizer = {k: v.contiguous() for k, v in state.items() if k.startswith("opt.")}
        save_file(optimizer, str(directory / "optimizer.safetensors.tmp"))
        os.replace(directory / "optimizer.safetensors.tmp", directory / "optimizer.safetensors")
        (directory / "checkpoint.json").write_text(json.dumps({"epoch": epoch, "step": step, "phase": phase,
                                                                "job_id": self.job_id}) + "\n")
        self.checkpoint = directory
        self.update(checkpoint=str(directory), checkpoint_epoch=epoch)
        self.message(f"checkpoint after epoch {epoch}: {directory}")


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
        self.update(state="running", phase=phase, epoch=epoch + 1, step=step + 1, loss=loss)

    def end_epoch(self, epoch: int, phase: int, seconds: float, samples: int) -> None:
        self.history.epochs.append({"epoch": epoch + 1, "phase": phase, "seconds": seconds,
                                    "samples_per_s": samples / seconds if seconds > 0 else None})
