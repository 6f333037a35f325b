"""The plan: what `pacctl plan` prints and writes and `pacctl train` reads. JSON with a version field.

Devices are named (not indexed) so a plan stays meaningful next to the profile it came from; layers are
half-open ranges [first_layer, end_layer) of the backbone's transformer layers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pac.planner.errors import ProfileError
from pac.planner.workload import TrainingJob

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class StagePlan:
    """One pipeline stage: layers [first_layer, end_layer) replicated on `devices`."""

    first_layer: int
    end_layer: int
    devices: tuple[str, ...]
    shares: tuple[int, ...]  # samples of each micro-batch each device computes


@dataclass(frozen=True)
class Phase1Plan:
    """Epoch 1: hybrid pipeline and data parallelism."""

    micro_batches: int  # M per mini-batch
    micro_batch_size: int  # samples per micro-batch
    stages: tuple[StagePlan, ...]
    bottleneck_s: float  # Eq. 2: the slowest stage's forward + backward of one micro-batch
    estimated_minibatch_s: float  # Eq. 4–6 (generalised)
    minibatch_s: float  # simulated
    epoch_s: float  # simulated mini-batch time * mini-batches per epoch
    bubble_fraction: float  # simulated idle share of the stages
    run_ahead: int = 0  # mini-batches the frozen layers run ahead of the training one (0: lock-step)


@dataclass(frozen=True)
class Move:
    """A bulk transfer between the phases."""

    source: str
    destination: str
    nbytes: float
    what: str  # "cache": hidden states; "side": side-network parameters and optimiser state


@dataclass(frozen=True)
class Phase2Plan:
    """Epochs 2..: data parallelism over the activation cache."""

    step_shares: dict[str, int]  # samples per device in a full step
    epoch_samples: dict[str, int]  # samples per device per epoch
    moves: tuple[Move, ...]
    moved_bytes: float
    redistribution_s: float  # simulated
    epoch_s: float  # simulated


@dataclass(frozen=True)
class DeviceUse:
    """Peak memory and disk of one device against its budgets."""

    device: str
    memory_budget_bytes: int
    phase1_peak_bytes: float  # 0 when the device sits out phase 1
    phase2_peak_bytes: float  # 0 when it sits out phase 2 (or there is no phase 2)
    disk_budget_bytes: int
    disk_bytes: float  # its phase-1 shard plus its phase-2 cache (both on disk while the cache is gathered)


@dataclass(frozen=True)
class Plan:
    """A complete plan for one job on one home."""

    strategy: str  # "pac", "pipeline-only", "data-only", "single-device"
    model: str
    devices: tuple[str, ...]  # every device of the home, in profile order
    job: TrainingJob
    phase1: Phase1Plan
    phase2: Phase2Plan | None  # None when there is one epoch, or for baselines that have no cache
    usage: tuple[DeviceUse, ...]
    total_s: float  # phase 1 + redistribution + the phase-2 epochs (baselines: every epoch as phase 1)
    reason: str  # why this plan, against the runner-up
    version: int = PLAN_FORMAT_VERSION
    controller_bytes: float = 0.0  # the controller's peak memory (pac.planner.memory.controller_memory)

    def used(self) -> set[str]:
        """The devices that take part: a phase-1 stage, or a share of phase 2."""
        shares = self.phase2.step_shares.items() if self.phase2 else ()
        return {n for s in self.phase1.stages for n in s.devices} | {n for n, c in shares if c > 0}

    def differences(self, job: TrainingJob) -> tuple[list[str], list[str]]:
        """How `job` differs from the job this plan was made for: (what makes the plan unusable: the
        mini-batch it splits, more memory per sample or weight than it was fitted with; what makes only
        its time estimates wrong: samples, epochs, a shorter sequence, fewer bits per weight)."""
        made, unusable, estimates = self.job, [], []
        if made.batch_size != job.batch_size:
            unusable.append(f"batch_size {made.batch_size} (the job: {job.batch_size})")
        if job.micro_batches is not None and job.micro_batches != self.phase1.micro_batches:
            unusable.append(f"{self.phase1.micro_batches} micro-batches (the job: {job.micro_batches})")
        fitted = made.seq_len is not None  # planned against a profile (a plan made by hand records no length)
        if fitted and job.weight_bits != made.weight_bits:  # its memory fit holds for as many bits or fewer
            (unusable if job.weight_bits > made.weight_bits else estimates).append(
                f"{made.weight_bits}-bit weights (the job: {job.weight_bits})")
        if None not in (made.seq_len, job.seq_len) and job.seq_len > made.seq_len:  # its memory fit does not hold
            unusable.append(f"seq_len {made.seq_len} (the job: {job.seq_len}; profile at the job's: pacctl profile "
                            f"--seq-len {job.seq_len})")
        elif None not in (made.seq_len, job.seq_len) and job.seq_len < made.seq_len:
            estimates.append(f"seq_len {made.seq_len} (the job: {job.seq_len})")
        last = self.phase1.stages[-1]
        if job.top_layers and last.first_layer > last.end_layer - job.top_layers:
            unusable.append(f"a last stage from layer {last.first_layer}, which cuts the {job.top_layers} tuned top "
                            f"layers (the job's top_layers: they must all be in the last stage)")
        for name in ("samples", "epochs", "top_layers"):
            if getattr(made, name) != getattr(job, name):
                estimates.append(f"{name} {getattr(made, name)} (the job: {getattr(job, name)})")
        return unusable, estimates

    def line(self) -> str:
        """The plan in one line."""
        return f"plan ({self.strategy}): " + "; ".join(
            f"stage {i}: layers {s.first_layer}-{s.end_layer - 1} on {len(s.devices)} device(s)"
            for i, s in enumerate(self.phase1.stages)) + f"; {self.phase1.micro_batches} micro-batch(es) per step"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Plan:
        try:
            version = data.get("version")
            if version != PLAN_FORMAT_VERSION:
                raise ProfileError(f"plan version is {version!r}; this reader knows {PLAN_FORMAT_VERSION}")
            p1 = dict(data["phase1"])
            p1["stages"] = tuple(StagePlan(s["first_layer"], s["end_layer"], tuple(s["devices"]),
                                           tuple(s["shares"])) for s in p1["stages"])
            phase2 = None
            if data.get("phase2") is not None:
                p2 = dict(data["phase2"])
                p2["moves"] = tuple(Move(**m) for m in p2["moves"])
                phase2 = Phase2Plan(**p2)
            return Plan(
                strategy=data["strategy"], model=data["model"], devices=tuple(data["devices"]),
                job=TrainingJob(**data["job"]), phase1=Phase1Plan(**p1), phase2=phase2,
                usage=tuple(DeviceUse(**u) for u in data["usage"]), total_s=data["total_s"],
                reason=data["reason"], version=version, controller_bytes=float(data.get("controller_bytes", 0.0)),
            )
        except (KeyError, TypeError) as error:
            raise ProfileError(f"not a plan: missing or bad field ({error})") from error

    @staticmethod
    def load(path: str | Path) -> Plan:
        path = Path(path)
        try:
            return Plan.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, ProfileError) as error:
            raise ProfileError(f"{path}: {error}") from error
