"""One replica of one phase-1 pipeline stage of a job, on this device.

`StageReplica` loads backbone layers [first, end) from the device's own model store, builds the stage's side
blocks (and the head on the last stage) from the tensors the controller sends, and runs a mini-batch's
1F1B operations: what it computes goes straight to the neighbouring stages' devices and comes back from
them through a `Transport` (pacd: TensorStream and Collective over mutual TLS), never through the
controller. Its operations run through `ReplicaDrive` (pac/pipeline/drive.py), the drive the in-process
executor uses too, with `PeerLinks` carrying the pieces. Every hidden state it computes is written to
its activation-cache shard. See docs/cluster.md.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from pac.cache import ActivationCache
from pac.collective import RingGroup
from pac.pipeline.build import build_stage
from pac.pipeline.drive import Piece, ReplicaDrive
from pac.pipeline.gate import ComputeGate
from pac.pipeline.layers import LayerSlice
from pac.side.network import side_spec
from pac.worker.ahead import RunAhead
from pac.worker.errors import JobError
from pac.worker.spec import MicroIn, StageSpec, load_model, shard_ends_with_final, shard_key, stage_taps
from pac.worker.tensors import advance_schedule, load_optimizer_tensors, optimizer_tensors

FORWARD_KINDS = {"hidden": "hidden", "encoder_hidden": "encoder_hidden", "side": "side",
                 "side_memory": "side_memory"}
BACKWARD_KINDS = {"side": "side_grad", "side_memory": "side_memory_grad"}


class Transport(Protocol):
    """How a stage reaches the other devices of its job (pacd: pac.net.peer_transport over its PeerNode)."""

    aborted: threading.Event  # set when the job is released: a waiting receive or send gives up
    send_timeout_s: float

    def send(self, target: str, tensor: torch.Tensor, *, stream: str, step: int, micro: int, kind: str,
             codec: str) -> None: ...

    def receive(self, stream: str, step: int, micro: int, kind: str, timeout_s: float) -> torch.Tensor: ...

    def flush(self) -> None: ...  # wait until every tensor sent so far was delivered

    def allreduce_(self, tensors: list[torch.Tensor], group: RingGroup, op_id: int) -> None: ...

    def branch(self) -> Transport: ...  # for another thread: its own sends to flush, the same `aborted`


class PeerLinks:
    """Pieces to and from the neighbouring stages' devices through a `Transport`.

    A piece travels as the stream "<job>/<F|B><first row>": a manifest (kind "other", the names it
    carries as UTF-8 JSON), then one tensor per name; forward activations in the job's codec."""

    def __init__(self, spec: StageSpec, transport: Transport, step: int) -> None:
        self.spec, self.transport, self.step = spec, transport, step
        self.forward = "FEA"  # the directions whose pieces carry forward states

    def _stream(self, piece: Piece) -> str:
        return f"{self.spec.job_id}/{piece.direction}{piece.start}"

    def send(self, piece: Piece, tensors: dict[str, torch.Tensor]) -> None:
        target, stream = self.spec.addresses[piece.stage][piece.replica], self._stream(piece)
        kinds = FORWARD_KINDS if piece.direction in self.forward else BACKWARD_KINDS
        names = sorted(tensors)
        manifest = torch.frombuffer(bytearray(json.dumps(names).encode()), dtype=torch.uint8)
        self.transport.send(target, manifest, stream=stream, step=self.step, micro=piece.micro, kind="other",
                            codec="none")
        for name in names:
            tensor = tensors[name].contiguous()
            codec = self.spec.codec if piece.direction in self.forward and tensor.is_floating_point() else "none"
            self.transport.send(target, tensor, stream=stream, step=self.step, micro=piece.micro,
                                kind=kinds[name], codec=codec)

    def receive(self, piece: Piece) -> dict[str, torch.Tensor]:
        stream, timeout_s = self._stream(piece), self.spec.timeout_s
        kinds = FORWARD_KINDS if piece.direction in self.forward else BACKWARD_KINDS
        manifest = self.transport.receive(stream, self.step, piece.micro, "other", timeout_s)
        names = json.loads(bytes(manifest.numpy()).decode())
        return {name: self.transport.receive(stream, self.step, piece.micro, kinds[name], timeout_s)
                for name in names}


class StageReplica:
    """One replica of one pipeline stage of a job, on this device."""

    def __init__(self, spec: StageSpec, state: dict[str, torch.Tensor], cache_root: Path,
                 transport: Transport) -> None:
        started = time.perf_counter()
        self.spec, self.transport = spec, transport
        # Only the stage's own layers are read, unless the side network is to be initialised here by
        # pruning (no state sent), which reads every layer.
        backbone, self.fingerprint = load_model(spec.model, spec.quantization, spec.seed,
                                                layers=(spec.first, spec.end) if state else None,
                                                lm_head=spec.head.task == "lm")
        self.side_spec = side_spec(backbone, spec.side)
        self.layers = LayerSlice(spec.first, spec.end, self.side_spec.stack_sizes)
        if self.layers.is_last != spec.is_last:
            raise JobError(f"stage {spec.stage} [{spec.first}, {spec.end}) of {self.layers.num_layers} layers "
                           f"{'ends' if self.layers.is_last else 'does not end'} the model, but it is stage "
                           f"{spec.stage} of {spec.num_stages}")
        self.taps = stage_taps(self.side_spec, self.layers)
        self.final_stack = self.side_spec.record_final() if shard_ends_with_final(self.side_spec, spec.is_last) \
            else None  # the stack whose final state ends this shard's records (the last stage's)
        self.shard: ActivationCache | None = None
        self.shard_key = shard_key(self.fingerprint, self.taps, len(self.side_spec.stack_sizes),
                                   self.final_stack is not None, spec.quantization, backbone.tokenizer.fingerprint())
        if spec.cache_precision:
            self.shard = ActivationCache(cache_root / "shards", self.shard_key, spec.cache_precision,
                                         keep=spec.cache_keep)
        self.cache_root = cache_root
        self.evaluation_shard: ActivationCache | None = None  # the evaluation data's records (evaluate_step)
        self._writing: ActivationCache | None = self.shard  # where _on_states writes
        self.worker = build_stage(backbone, self.layers, spec.side, spec.head, state=state or None,
                                  on_states=self._on_states, top=spec.top)
        del backbone
        gc.collect()
        self.worker.start(spec.train, spec.total_steps)
        if spec.steps_done and self.worker.optimizer is not None:  # a resumed job: where its checkpoint was
            load_optimizer_tensors(self.worker.module, self.worker.optimizer, state)
            advance_schedule(self.worker.scheduler, spec.steps_done)
        self._micro: dict[int, MicroIn] = {}
        self.records_written = 0
        self.steps_done = spec.steps_done
        self.gate = ComputeGate(spec.run_ahead)
        self.ahead: RunAhead | None = None
        if spec.run_ahead:
            self.ahead = RunAhead(self._drive, self._device_batch, self._flush_shard, transport.branch(), spec.timeout_s,
                                  f"run-ahead-{spec.job_id}-{spec.stage}.{spec.replica}")
        self.load_s = time.perf_counter() - started

    def _drive(self, step: int, transport: Transport) -> ReplicaDrive:
        spec = self.spec
        return ReplicaDrive(self.worker, spec.stage, spec.replica, tuple(map(tuple, spec.shares)),
                            PeerLinks(spec, transport, step), self.gate)

    def _device_batch(self, micro: MicroIn) -> dict[str, torch.Tensor]:
        device = self.worker.backbone.backbone.device
        return {k: v.to(device) for k, v in micro.batch.items()}

    def _flush_shard(self) -> None:
        if self.shard is not None:
            self.shard.flush()

    @property
    def group(self) -> RingGroup | None:
        members = self.spec.addresses[self.spec.stage]
        if len(members) < 2:
            return None
        return RingGroup(f"{self.spec.job_id}/stage{self.spec.stage}", self.spec.replica, tuple(members),
                         step_timeout_s=self.spec.timeout_s, wire=self.spec.train.allreduce_precision)

    def held_bytes(self) -> int:
        from pac.pipeline.backbone_stage import held_bytes

        return held_bytes(self.worker.backbone.backbone) + sum(
            t.numel() * t.element_size() for t in self.worker.module.trained_state().values())

    # ---- the activation cache shard ----------------------------------------------------------------
    def _on_states(self, micro: int, batch, states, info: MicroIn | None) -> None:
        """Write a micro-batch's part of its cache records: `info` is the MicroIn of a run-ahead forward
        (which writes the training shard); None: micro-batch `micro` of the step running now."""
        shard = self._writing if info is None else self.shard
        if shard is None:
            return
        info = info or self._micro[micro]
        missing = [tap for tap in self.taps if tap not in states.taps]
        if missing:
            raise JobError(f"stage {self.spec.stage}: the backbone slice did not compute taps {missing}")
        for row, key in enumerate(info.keys):
            if key in shard:
                continue
            lengths = info.lengths[row]
            tensors = [states.taps[(s, i)][row, : lengths[s]] for s, i in self.taps]
            if self.final_stack is not None:  # the head's input, or (tuned top layers) the encoder's output
                last = self.final_stack == len(self.side_spec.stack_sizes) - 1
                final = states.final if last else states.encoder_final
                tensors.append(final[row, : lengths[self.final_stack]].detach())
            shard.put(key, tensors)
            if shard is self.shard:
                self.records_written += 1

    # ---- one mini-batch ----------------------------------------------------------------------------
    def run_step(self, step: int, loss_total: int, micro_batches: list[MicroIn],
                 clock: Callable[[], float] = time.time) -> tuple[float, float, list[dict]]:
        """One mini-batch: this replica's 1F1B operations, then the stage group's AllReduce. Running ahead,
        `micro_batches` carry their rows only: the tensors came with the step's ahead request.

        Returns (this replica's share of the mini-batch loss (last stage; else 0), the stage's squared
        gradient norm, the measured timeline)."""
        worker = self.worker
        self._micro = {m.index: m for m in micro_batches}
        if sorted(self._micro) != list(range(len(micro_batches))):
            raise JobError(f"step {step}: micro-batches must be numbered 0..{len(micro_batches) - 1}")
        drive = self._drive(step, self.transport)
        events, loss, gate = [], 0.0, self.gate
        with gate.step(step):  # the compute is the step's but while it waits (then the frozen layers run ahead)
            for op in drive.ops(len(micro_batches)):
                micro = self._micro[op.micro]
                start, stop = drive.own(micro.rows)
                if start == stop:
                    continue
                frozen = None
                if self.ahead is not None and op.kind == "F":
                    with gate.waiting():
                        frozen, micro = self.ahead.take(step, op.micro)
                    self._micro[op.micro] = micro  # RunStep sends no tensors of a micro-batch queued ahead
                began = clock()
                loss += drive.run(op, micro.rows, lambda m=micro: self._device_batch(m), loss_total, frozen)
                events.append({"op": op.kind, "micro": op.micro, "start_s": began, "end_s": clock()})
            began = clock()
            with gate.waiting():
                self.transport.flush()
            events.append({"op": "send", "micro": None, "start_s": began, "end_s": clock()})
            group = self.group
            gradients = worker.gradients()
            if group is not None and gradients:
                began = clock()
                with gate.waiting():
                    self.transport.allreduce_(gradients, group, step)
                events.append({"op": "allreduce", "micro": None, "start_s": began, "end_s": clock()})
        if self.ahead is not None:
            events += self.ahead.wait_flushed(step)  # its cache records, as a lock-step step's
        else:
            self._flush_shard()
        return loss, worker.grad_square_norm(), events

    def run_ahead(self, step: int, micro_batches: list[MicroIn]) -> None:
        """Queue the frozen layers' forward of `step`'s micro-batches (RunStep with ahead)."""
        if self.ahead is None:
            raise JobError(f"step {step} was sent to run ahead, but the stage was loaded without run-ahead")
        self.ahead.submit(step, micro_batches)

    def evaluate_step(self, step: int, micro_batches: list[MicroIn]) -> list[dict]:
        """Evaluation micro-batches: the backbone slice's forward alone (no loss, backward or step), each
        row's part of its cache record written to the evaluation shard (at the job's cache precision,
        float32 without a cache), read by the controller with FetchCache. Returns the timeline."""
        spec, worker = self.spec, self.worker
        self._micro = {m.index: m for m in micro_batches}
        if sorted(self._micro) != list(range(len(micro_batches))):
            raise JobError(f"evaluation {step}: micro-batches must be numbered 0..{len(micro_batches) - 1}")
        if self.evaluation_shard is None:
            self.evaluation_shard = ActivationCache(self.cache_root / "evaluation", self.shard_key,
                                                    spec.evaluation_precision or spec.cache_precision or "fp32")
        drive = ReplicaDrive(worker, spec.stage, spec.replica, tuple(map(tuple, spec.shares)),
                             PeerLinks(spec, self.transport, step))
        device = worker.backbone.backbone.device
        events = []
        self._writing = self.evaluation_shard
        try:
            for index in range(len(micro_batches)):
                micro = self._micro[index]
                start, stop = drive.own(micro.rows)
                if start == stop:
                    continue
                began = time.time()
                drive.evaluate(index, micro.rows, lambda m=micro: {k: v.to(device) for k, v in m.batch.items()})
                events.append({"op": "E", "micro": index, "start_s": began, "end_s": time.time()})
            self.transport.flush()
        finally:
            self._writing = self.shard
        self.evaluation_shard.flush()
        return events

    def apply(self, clip: float) -> float:
        self.worker.step(clip)
        self.steps_done += 1
        optimizer = self.worker.optimizer
        return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else 0.0

    def state(self, optimizer: bool) -> tuple[dict[str, torch.Tensor], int]:
        """The trained tensors (and the optimiser's), and the optimiser steps they have taken."""
        tensors = self.worker.module.trained_state()
        if optimizer:
            tensors.update(optimizer_tensors(self.worker.module, self.worker.optimizer))
        return tensors, self.steps_done

    def tuned_top(self, top) -> tuple | None:
        """(the tuned top layers, their backbone) if this replica trains them as `top` (TopConfig) asks:
        a phase-2 member on this device takes them over instead of loading the model again."""
        if self.worker is None or self.worker.module.top is None or self.spec.top != top:
            return None
        return self.worker.module.top, self.worker.backbone.backbone

    def stop_ahead(self) -> None:
        """Stop the run-ahead: its queued forwards are dropped, one waiting for the compute gives up."""
        if self.ahead is not None:
            self.ahead.stop()
        self.gate.close()

    def release_model(self) -> None:
        """Phase 1 is over: drop the backbone slice and the trained tensors; the shard stays (the
        evaluation shard goes: the controller fetched its records after each evaluation)."""
        self.stop_ahead()
        self.worker = None
        if self.evaluation_shard is not None:
            self.evaluation_shard.close()
            self.evaluation_shard = None
        gc.collect()
