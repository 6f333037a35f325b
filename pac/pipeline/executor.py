"""Run mini-batches through S stages of R replicas each, in one process: phase 1 without the network.

The executor follows the 1F1B schedule stage by stage (an operation runs once its inputs have arrived,
so a schedule that could deadlock fails loudly); every replica runs its operations through the same
`ReplicaDrive` as a device does (pac/pipeline/drive.py), its pieces kept in memory (`MemoryLinks`).
It sums each stage's gradients over its replicas (`LocalGroup`, the ring AllReduce's stand-in), clips
by the pipeline-wide gradient norm and steps every replica. The daemons and the controller do the
same over gRPC; this is the reference they are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from pac.data.batching import Encoded, collate, to_device
from pac.pipeline.drive import Piece, ReplicaDrive
from pac.pipeline.errors import PipelineError
from pac.pipeline.schedule import Op
from pac.pipeline.split import loss_count, row_ranges, select_rows
from pac.pipeline.stage import StageWorker, clip_coefficient
from pac.pipeline.transport import LocalGroup, run_members
from pac.train.loop import TrainConfig, batches


@dataclass(frozen=True)
class PipelineConfig:
    micro_batches: int  # M: micro-batches per mini-batch (fewer when a mini-batch has fewer samples)
    shares: tuple[tuple[int, ...], ...]  # per stage, each replica's relative share of a micro-batch's rows
    pad_id: int = 0  # the tokenizer's padding id
    task: str = "classification"  # classification | regression | lm

    def __post_init__(self) -> None:
        if self.micro_batches < 1:
            raise PipelineError(f"micro_batches must be >= 1, got {self.micro_batches}")
        if not self.shares or any(not s or min(s) < 0 or sum(s) == 0 for s in self.shares):
            raise PipelineError(f"shares must give every stage a replica with a share > 0, got {self.shares}")


class InProcessPipeline:
    def __init__(self, stages: list[list[StageWorker]], config: PipelineConfig) -> None:
        if [len(replicas) for replicas in stages] != [len(s) for s in config.shares]:
            raise PipelineError(f"replicas per stage {[len(r) for r in stages]} do not match the shares "
                                f"{config.shares}")
        self.stages, self.config = stages, config
        self.groups = [LocalGroup(len(replicas)) for replicas in stages]  # one AllReduce group per stage
        self.max_grad_norm = math.inf

    def start(self, train: TrainConfig, total_steps: int) -> None:
        self.max_grad_norm = train.max_grad_norm
        for replicas in self.stages:
            for worker in replicas:
                worker.start(train, total_steps)

    def train_step(self, group: list[Encoded]) -> float:
        """One mini-batch: 1F1B over its micro-batches, AllReduce, clip, step. Returns its mean loss."""
        micro = [collate(group[a:b], self.config.pad_id, self.config.task)
                 for a, b in row_ranges(len(group), min(self.config.micro_batches, len(group)))]
        family = self.stages[-1][0].module.head.family
        run = _Run(self, micro, sum(loss_count(b, self.config.task, family) for b in micro))
        run.execute()
        for group_, replicas in zip(self.groups, self.stages, strict=True):
            members = [group_.member(rank) for rank in range(len(replicas))]
            run_members([lambda w=w, m=m: w.reduce_gradients(m) for w, m in zip(replicas, members, strict=True)])
        coefficient = clip_coefficient([replicas[0].grad_square_norm() for replicas in self.stages],
                                       self.max_grad_norm)
        for replicas in self.stages:
            for worker in replicas:
                worker.step(coefficient)
        return run.loss


class MemoryLinks:
    """Pieces between the replicas of one process: kept until the receiver's operation takes them."""

    def __init__(self) -> None:
        self._pieces: dict[Piece, dict[str, torch.Tensor]] = {}

    def send(self, piece: Piece, tensors: dict[str, torch.Tensor]) -> None:
        self._pieces[piece] = tensors

    def arrived(self, piece: Piece) -> bool:
        return piece in self._pieces

    def receive(self, piece: Piece) -> dict[str, torch.Tensor]:
        return self._pieces.pop(piece)


class _Run:
    """The state of one mini-batch going through the pipeline."""

    def __init__(self, pipeline: InProcessPipeline, micro: list[dict], loss_total: int) -> None:
        self.micro, self.loss_total = micro, loss_total
        self.links = MemoryLinks()
        shares = pipeline.config.shares
        self.drives = [[ReplicaDrive(worker, stage, replica, shares, self.links)
                        for replica, worker in enumerate(replicas)] for stage, replicas in enumerate(pipeline.stages)]
        self.loss = 0.0

    def execute(self) -> None:
        """Every stage's 1F1B operations, each as soon as its inputs have arrived."""
        schedule = [replicas[0].ops(len(self.micro)) for replicas in self.drives]
        position = [0] * len(schedule)
        while any(p < len(ops) for p, ops in zip(position, schedule, strict=True)):
            progressed = False
            for stage, ops in enumerate(schedule):
                if position[stage] < len(ops) and self.ready(stage, ops[position[stage]]):
                    self.run_op(stage, ops[position[stage]])
                    position[stage] += 1
                    progressed = True
            if not progressed:
                waiting = {s: str(ops[p]) for s, (p, ops) in enumerate(zip(position, schedule, strict=True))
                           if p < len(ops)}
                raise PipelineError(f"the schedule cannot make progress; stages wait at {waiting}")

    def _rows(self, micro: int) -> int:
        return self.micro[micro]["input_ids"].shape[0]

    def ready(self, stage: int, op: Op) -> bool:
        return all(self.links.arrived(piece) for drive in self.drives[stage]
                   for piece in drive.inbound(op, self._rows(op.micro)))

    def run_op(self, stage: int, op: Op) -> None:
        rows = self._rows(op.micro)
        for drive in self.drives[stage]:
            start, stop = drive.own(rows)
            if start < stop:
                batch = partial(self._batch, op.micro, start, stop, drive.worker.backbone.backbone.device)
                self.loss += drive.run(op, rows, batch, self.loss_total)

    def _batch(self, micro: int, start: int, stop: int, device: torch.device) -> dict[str, torch.Tensor]:
        return to_device(select_rows(self.micro[micro], start, stop), device)


def train_pipeline(pipeline: InProcessPipeline, items: list[Encoded], config: TrainConfig,
                   on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """`pac.train.loop.train` through the pipeline: same shuffling, schedule and optimizer; the losses."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pipeline.start(config, math.ceil(len(items) / config.batch_size) * config.epochs)
    losses = []
    for _ in range(config.epochs):
        for group in batches(items, config.batch_size, generator):
            losses.append(pipeline.train_step(group))
            if on_step:
                on_step(len(losses), losses[-1])
    return losses
