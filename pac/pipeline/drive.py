"""One replica's part of a mini-batch in the 1F1B pipeline: the drive the in-process executor
(pac/pipeline/executor.py) and the device worker (pac/worker/stage.py) share.

The replicas of a stage each hold a share of every micro-batch's rows (`row_ranges` by the plan's
shares). A forward joins, in row order, the pieces of its rows that the previous stage's replicas
computed, runs the replica's stage and hands every next-stage replica the rows that replica holds; a
backward does the same with the gradients of the side state, towards the previous stage. `Links`
carries one piece: the executor keeps it in memory, a device sends it to its neighbour's daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from pac.pipeline.backbone_stage import StageStates
from pac.pipeline.errors import PipelineError
from pac.pipeline.gate import ComputeGate
from pac.pipeline.schedule import Op, one_f_one_b
from pac.pipeline.split import route, row_ranges
from pac.pipeline.stage import StageWorker

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Piece:
    """The rows [start, ...) of micro-batch `micro` one replica sends another: its address."""

    direction: str  # "F": activations to the next stage; "B": side gradients to the previous one
    stage: int  # the receiving replica's stage
    replica: int  # the receiving replica within its stage
    micro: int
    start: int  # the piece's first row within the micro-batch


class Links(Protocol):
    """How pieces travel between the replicas of neighbouring stages."""

    def send(self, piece: Piece, tensors: Tensors) -> None: ...

    def receive(self, piece: Piece) -> Tensors: ...  # blocks (a device) or finds it sent (in process)


class ReplicaDrive:
    """Replica `replica` of stage `stage` of a pipeline whose stages split rows by `shares`."""

    def __init__(self, worker: StageWorker, stage: int, replica: int, shares: tuple[tuple[int, ...], ...],
                 links: Links, gate: ComputeGate | None = None) -> None:
        self.worker, self.stage, self.replica, self.shares, self.links = worker, stage, replica, shares, links
        self.gate = gate or ComputeGate()  # the device's compute: its training step before run-ahead forwards

    @property
    def is_last(self) -> bool:
        return self.stage == len(self.shares) - 1

    def ops(self, micro_batches: int) -> tuple[Op, ...]:
        """This stage's operations of a mini-batch of `micro_batches`, in 1F1B order."""
        return one_f_one_b(len(self.shares), micro_batches)[self.stage]

    def rows(self, rows: int, stage: int | None = None) -> tuple[tuple[int, int], ...]:
        """Every replica's rows [start, stop) of a micro-batch of `rows` rows, on `stage` (default: its own)."""
        return row_ranges(rows, tuple(self.shares[self.stage if stage is None else stage]))

    def own(self, rows: int) -> tuple[int, int]:
        return self.rows(rows)[self.replica]

    def inbound(self, op: Op, rows: int) -> list[Piece]:
        """The pieces `op` waits for (none for the first stage's forwards and the last stage's backwards).
        Kinds "E" (an evaluation forward) and "A" (the frozen layers' forward, run ahead) travel like "F",
        on their own streams."""
        if (op.kind in "FEA" and self.stage == 0) or (op.kind == "B" and self.is_last):
            return []
        source = self.stage - 1 if op.kind in "FEA" else self.stage + 1
        return [Piece(op.kind, self.stage, self.replica, op.micro, start)
                for _, receiver, start, _ in route(self.rows(rows, source), self.rows(rows))
                if receiver == self.replica]

    def _gather(self, op: Op, rows: int) -> Tensors:
        pieces = self.inbound(op, rows)
        if not pieces:
            if (op.kind in "FEA" and self.stage == 0) or (op.kind == "B" and self.is_last):
                return {}
            raise PipelineError(f"stage {self.stage} replica {self.replica}: no rows of micro-batch {op.micro} "
                                f"come from the neighbouring stage")
        with self.gate.waiting():  # a frozen forward may compute meanwhile
            received = [self.links.receive(piece) for piece in sorted(pieces, key=lambda p: p.start)]
        names = set(received[0])
        if any(set(r) != names for r in received):
            raise PipelineError(f"stage {self.stage} replica {self.replica}, micro-batch {op.micro}: the pieces "
                                f"carry different tensors {[sorted(r) for r in received]}")
        return {name: torch.cat([r[name] for r in received]) for name in received[0]}

    def _send(self, op: Op, rows: int, tensors: Tensors) -> None:
        target = self.stage + 1 if op.kind in "FEA" else self.stage - 1
        offset = self.own(rows)[0]
        for sender, receiver, start, stop in route(self.rows(rows), self.rows(rows, target)):
            if sender == self.replica:
                piece = {name: t[start - offset:stop - offset] for name, t in tensors.items()}
                self.links.send(Piece(op.kind, target, receiver, op.micro, start), piece)

    def evaluate(self, micro: int, rows: int, batch: Callable[[], Tensors]) -> None:
        """An evaluation forward of micro-batch `micro` on this replica's rows: the backbone slice alone
        (its states to the worker's `on_states`), what the next stage needs sent on."""
        op = Op("E", micro)
        out = self.worker.forward_states(micro, batch(), self._gather(op, rows))
        if not self.is_last:
            self._send(op, rows, out)

    def ahead(self, step: int, micro: int, rows: int, batch: Callable[[], Tensors], info=None) -> StageStates:
        """The frozen layers' forward of micro-batch `micro` of mini-batch `step` on this replica's rows,
        ahead of its training forward: their hidden states are sent on to the next stage ("A" pieces) and
        the states returned for `run(..., frozen=)`; `info` goes to the worker's `on_states`."""
        op = Op("A", micro)
        inbound = self._gather(op, rows)
        with self.gate.background(step):
            states = self.worker.frozen(micro, batch(), inbound, info)
        if not self.is_last:
            self._send(op, rows, states.outbound)
            states.outbound = {}
        return states

    def run(self, op: Op, rows: int, batch: Callable[[], Tensors], loss_total: int,
            frozen: StageStates | None = None) -> float:
        """One operation on this replica's rows of a micro-batch of `rows` rows; `batch()` gives those rows
        (a forward reads them). Returns the replica's loss share (the last stage's forwards; else 0).
        `frozen`: a forward's frozen-layer states computed ahead (`ahead`); its pieces then carry only
        the side network's states. On a device, the step holds the compute (`ComputeGate.step`) but while
        it waits for a neighbour's pieces."""
        inbound = self._gather(op, rows)
        if op.kind == "F":
            out = self.worker.forward(op.micro, batch(), inbound, loss_total, frozen)
            if self.is_last:
                return out["loss"].item()
            self._send(op, rows, out)
        else:
            grads = self.worker.backward(op.micro, inbound)
            if self.stage > 0:
                self._send(op, rows, grads)
        return 0.0
