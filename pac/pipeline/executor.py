"""Run mini-batches through S stages of R replicas each, in one process: phase 1 without the network.

The executor follows the 1F1B schedule stage by stage (an operation runs once its inputs have arrived,
so a schedule that could deadlock fails loudly), routes each replica's rows to the next stage's
replicas, sums each stage's gradients over its replicas (`LocalGroup`, the ring AllReduce's stand-in),
clips by the pipeline-wide gradient norm and steps every replica. The daemons and the controller do the
same over gRPC; this is the reference they are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pac.data.batching import Encoded, collate, to_device
from pac.pipeline.errors import PipelineError
from pac.pipeline.schedule import Op, one_f_one_b
from pac.pipeline.split import loss_count, route, row_ranges, select_rows
from pac.pipeline.stage import StageWorker, clip_coefficient
from pac.pipeline.transport import InMemoryTransport, LocalGroup, run_members
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
        run.execute(one_f_one_b(len(self.stages), len(micro)))
        for group_, replicas in zip(self.groups, self.stages, strict=True):
            members = [group_.member(rank) for rank in range(len(replicas))]
            run_members([lambda w=w, m=m: w.reduce_gradients(m) for w, m in zip(replicas, members, strict=True)])
        coefficient = clip_coefficient([replicas[0].grad_square_norm() for replicas in self.stages],
                                       self.max_grad_norm)
        for replicas in self.stages:
            for worker in replicas:
                worker.step(coefficient)
        return run.loss


class _Run:
    """The state of one mini-batch going through the pipeline."""

    def __init__(self, pipeline: InProcessPipeline, micro: list[dict], loss_total: int) -> None:
        self.stages, self.micro, self.loss_total = pipeline.stages, micro, loss_total
        self.shares = pipeline.config.shares
        self.transport = InMemoryTransport()
        self.loss = 0.0

    def rows(self, stage: int, micro: int) -> tuple[tuple[int, int], ...]:
        return row_ranges(self.micro[micro]["input_ids"].shape[0], self.shares[stage])

    def execute(self, schedule: tuple[tuple[Op, ...], ...]) -> None:
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

    def _expected(self, op: Op, stage: int, replica: int) -> int:
        source = stage - 1 if op.kind == "F" else stage + 1
        pieces = route(self.rows(source, op.micro), self.rows(stage, op.micro))
        return sum(1 for piece in pieces if piece[1] == replica)

    def ready(self, stage: int, op: Op) -> bool:
        if (op.kind == "F" and stage == 0) or (op.kind == "B" and stage == len(self.stages) - 1):
            return True
        return all(self.transport.arrived((op.kind, stage, op.micro, r)) == self._expected(op, stage, r)
                   for r in range(len(self.stages[stage])))

    def run_op(self, stage: int, op: Op) -> None:
        for replica, (start, stop) in enumerate(self.rows(stage, op.micro)):
            if start < stop:
                self._run_replica(stage, replica, start, stop, op)

    def _inbound(self, stage: int, replica: int, op: Op) -> dict[str, torch.Tensor]:
        first_f, last_b = op.kind == "F" and stage == 0, op.kind == "B" and stage == len(self.stages) - 1
        if first_f or last_b:
            return {}
        return self.transport.take((op.kind, stage, op.micro, replica), self._expected(op, stage, replica))

    def _run_replica(self, stage: int, replica: int, start: int, stop: int, op: Op) -> None:
        worker = self.stages[stage][replica]
        inbound = self._inbound(stage, replica, op)
        device = worker.backbone.backbone.device
        if op.kind == "F":
            batch = to_device(select_rows(self.micro[op.micro], start, stop), device)
            out = worker.forward(op.micro, batch, inbound, self.loss_total)
            if stage == len(self.stages) - 1:
                self.loss += out["loss"].item()
                return
            self._send("F", stage, stage + 1, op.micro, replica, start, out)
        else:
            grads = worker.backward(op.micro, inbound)
            if stage > 0:
                self._send("B", stage, stage - 1, op.micro, replica, start, grads)

    def _send(self, kind: str, stage: int, target: int, micro: int, replica: int, offset: int,
              tensors: dict[str, torch.Tensor]) -> None:
        for sender, receiver, start, stop in route(self.rows(stage, micro), self.rows(target, micro)):
            if sender == replica:
                piece = {name: t[start - offset:stop - offset] for name, t in tensors.items()}
                self.transport.send((kind, target, micro, receiver), start, piece)


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
