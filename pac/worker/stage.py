"""One replica of one phase-1 pipeline stage of a job, on this device.

`StageHost` loads backbone layers [first, end) from the device's own model store, builds the stage's side
blocks (and the head on the last stage) from the tensors the controller sends, and runs a mini-batch's
1F1B operations: what it computes goes straight to the neighbouring stages' devices and comes back from
them through a `Transport` (pacd: TensorStream and Collective over mutual TLS), never through the
controller. Every hidden state it computes is written to its activation-cache shard.

A piece of a micro-batch travels as a stream "<job>/<F|B><first row>": first a manifest (kind "other",
the names it carries as UTF-8 JSON), then one tensor per name. See docs/cluster.md.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from pac.cache import ActivationCache
from pac.collective import RingGroup
from pac.heads import HeadConfig
from pac.pipeline.build import build_stage
from pac.pipeline.layers import LayerSlice
from pac.pipeline.schedule import one_f_one_b
from pac.pipeline.split import route, row_ranges
from pac.side.network import side_spec
from pac.train.loop import TrainConfig
from pac.worker.spec import JobError, MicroIn, StageSpec, load_model, shard_key, side_config, stage_taps
from pac.worker.tensors import optimizer_tensors

FORWARD_KINDS = {"hidden": "hidden", "encoder_hidden": "encoder_hidden", "side": "side",
                 "side_memory": "side_memory"}
BACKWARD_KINDS = {"side": "side_grad", "side_memory": "side_memory_grad"}


class Transport(Protocol):
    """How a stage reaches the other devices of its job (pacd: SyncPeer over the daemon's PeerNode)."""

    def send(self, target: str, tensor: torch.Tensor, *, stream: str, step: int, micro: int, kind: str,
             codec: str) -> None: ...

    def receive(self, stream: str, step: int, micro: int, kind: str, timeout_s: float) -> torch.Tensor: ...

    def flush(self) -> None: ...  # wait until every tensor sent so far was delivered

    def allreduce_(self, tensors: list[torch.Tensor], group: RingGroup, op_id: int) -> None: ...



class StageHost:
    """One replica of one pipeline stage of a job, on this device."""

    def __init__(self, spec: StageSpec, state: dict[str, torch.Tensor], cache_root: Path,
                 transport: Transport) -> None:
        started = time.perf_counter()
        self.spec, self.transport = spec, transport
        backbone, self.fingerprint = load_model(spec.model, spec.quantization, spec.seed)
        config = side_config(spec.side)
        self.side_spec = side_spec(backbone, config)
        self.layers = LayerSlice(spec.first, spec.end, self.side_spec.stack_sizes)
        if self.layers.is_last != spec.is_last:
            raise JobError(f"stage {spec.stage} [{spec.first}, {spec.end}) of {self.layers.num_layers} layers "
                           f"{'ends' if self.layers.is_last else 'does not end'} the model, but it is stage "
                           f"{spec.stage} of {spec.num_stages}")
        self.taps = stage_taps(self.side_spec, self.layers)
        self.shard: ActivationCache | None = None
        if spec.cache_precision:
            key = shard_key(self.fingerprint, self.taps, len(self.side_spec.stack_sizes), spec.is_last,
                            spec.quantization, backbone.tokenizer.fingerprint())
            self.shard = ActivationCache(cache_root / "shards", key, spec.cache_precision, keep=spec.cache_keep)
        self.worker = build_stage(backbone, self.layers, config, HeadConfig(**spec.head), state=state or None,
                                  on_states=self._on_states)
        del backbone
        gc.collect()
        self.worker.start(TrainConfig(**spec.train), spec.total_steps)
        self._micro: dict[int, MicroIn] = {}
        self.records_written = 0
        self.steps_done = 0
        self.load_s = time.perf_counter() - started

    @property
    def group(self) -> RingGroup | None:
        members = self.spec.addresses[self.spec.stage]
        if len(members) < 2:
            return None
        return RingGroup(f"{self.spec.job_id}/stage{self.spec.stage}", self.spec.replica, tuple(members),
                         step_timeout_s=self.spec.timeout_s)

    def held_bytes(self) -> int:
        from pac.pipeline.backbone_stage import held_bytes

        return held_bytes(self.worker.backbone.backbone) + sum(
            t.numel() * t.element_size() for t in self.worker.module.state_dict().values())

    # ---- the activation cache shard ----------------------------------------------------------------
    def _on_states(self, micro: int, batch, states) -> None:
        if self.shard is None:
            return
        info = self._micro[micro]
        missing = [tap for tap in self.taps if tap not in states.taps]
        if missing:
            raise JobError(f"stage {self.spec.stage}: the backbone slice did not compute taps {missing}")
        for row, key in enumerate(info.keys):
            if key in self.shard:
                continue
            lengths = info.lengths[row]
            tensors = [states.taps[(s, i)][row, : lengths[s]] for s, i in self.taps]
            if self.spec.is_last:
                tensors.append(states.final[row, : lengths[-1]])
            self.shard.put(key, tensors)
            self.records_written += 1

    # ---- one mini-batch ----------------------------------------------------------------------------
    def _ranges(self, stage: int, rows: int) -> tuple[tuple[int, int], ...]:
        return row_ranges(rows, tuple(self.spec.shares[stage]))

    def _stream(self, direction: str, start: int) -> str:
        return f"{self.spec.job_id}/{direction}{start}"

    def _send(self, direction: str, target_stage: int, micro: MicroIn, step: int,
              tensors: dict[str, torch.Tensor]) -> None:
        spec = self.spec
        mine = self._ranges(spec.stage, micro.rows)
        offset = mine[spec.replica][0]
        kinds = FORWARD_KINDS if direction == "F" else BACKWARD_KINDS
        for sender, receiver, start, stop in route(mine, self._ranges(target_stage, micro.rows)):
            if sender != spec.replica:
                continue
            target = spec.addresses[target_stage][receiver]
            stream = self._stream(direction, start)
            names = sorted(tensors)
            manifest = torch.frombuffer(bytearray(json.dumps(names).encode()), dtype=torch.uint8)
            self.transport.send(target, manifest, stream=stream, step=step, micro=micro.index, kind="other",
                                codec="none")
            for name in names:
                piece = tensors[name][start - offset:stop - offset].contiguous()
                codec = spec.codec if direction == "F" and piece.is_floating_point() else "none"
                self.transport.send(target, piece, stream=stream, step=step, micro=micro.index,
                                    kind=kinds[name], codec=codec)

    def _gather(self, direction: str, source_stage: int, micro: MicroIn, step: int) -> dict[str, torch.Tensor]:
        spec = self.spec
        mine = self._ranges(spec.stage, micro.rows)
        kinds = FORWARD_KINDS if direction == "F" else BACKWARD_KINDS
        pieces = []
        for _, receiver, start, _ in route(self._ranges(source_stage, micro.rows), mine):
            if receiver != spec.replica:
                continue
            stream = self._stream(direction, start)
            manifest = self.transport.receive(stream, step, micro.index, "other", spec.timeout_s)
            names = json.loads(bytes(manifest.numpy()).decode())
            pieces.append((start, {name: self.transport.receive(stream, step, micro.index, kinds[name],
                                                                spec.timeout_s) for name in names}))
        pieces.sort(key=lambda piece: piece[0])
        if not pieces:
            raise JobError(f"stage {spec.stage} replica {spec.replica}: no rows of micro-batch {micro.index} "
                           f"come from stage {source_stage}")
        names = set(pieces[0][1])
        if any(set(p[1]) != names for p in pieces):
            raise JobError(f"micro-batch {micro.index}: pieces from stage {source_stage} carry different tensors")
        return {name: torch.cat([p[1][name] for p in pieces]) for name in pieces[0][1]}

    def run_step(self, step: int, loss_total: int, micro_batches: list[MicroIn],
                 clock: Callable[[], float] = time.time) -> tuple[float, float, list[dict]]:
        """One mini-batch: this replica's 1F1B operations, then the stage group's AllReduce.

        Returns (this replica's share of the mini-batch loss (last stage; else 0), the stage's squared
        gradient norm, the measured timeline)."""
        spec, worker = self.spec, self.worker
        self._micro = {m.index: m for m in micro_batches}
        if sorted(self._micro) != list(range(len(micro_batches))):
            raise JobError(f"step {step}: micro-batches must be numbered 0..{len(micro_batches) - 1}")
        events, loss = [], 0.0
        device = worker.backbone.backbone.device
        for op in one_f_one_b(spec.num_stages, len(micro_batches))[spec.stage]:
            micro = self._micro[op.micro]
            start, stop = self._ranges(spec.stage, micro.rows)[spec.replica]
            if start == stop:
                continue
            began = clock()
            if op.kind == "F":
                inbound = self._gather("F", spec.stage - 1, micro, step) if spec.stage > 0 else {}
                batch = {k: v.to(device) for k, v in micro.batch.items()}
                out = worker.forward(op.micro, batch, inbound, loss_total)
                if spec.is_last:
                    loss += float(out["loss"])
                else:
                    self._send("F", spec.stage + 1, micro, step, out)
            else:
                grads = self._gather("B", spec.stage + 1, micro, step) if not spec.is_last else {}
                out = worker.backward(op.micro, grads)
                if spec.stage > 0:
                    self._send("B", spec.stage - 1, micro, step, out)
            events.append({"op": op.kind, "micro": op.micro, "start_s": began, "end_s": clock()})
        began = clock()
        self.transport.flush()
        events.append({"op": "send", "micro": None, "start_s": began, "end_s": clock()})
        group = self.group
        gradients = worker.gradients()
        if group is not None and gradients:
            began = clock()
            self.transport.allreduce_(gradients, group, step)
            events.append({"op": "allreduce", "micro": None, "start_s": began, "end_s": clock()})
        if self.shard is not None:
            self.shard.flush()
        return loss, worker.grad_square_norm(), events

    def apply(self, clip: float) -> float:
        self.worker.step(clip)
        self.steps_done += 1
        optimizer = self.worker.optimizer
        return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else 0.0

    def state(self, optimizer: bool) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = dict(self.worker.module.state_dict())
        if optimizer:
            tensors.update(optimizer_tensors(self.worker.module, self.worker.optimizer))
        return tensors, {"steps_done": self.steps_done, "stage": self.spec.stage}

    def release_model(self) -> None:
        """Phase 1 is over: drop the backbone slice and the trained tensors; the shard stays."""
        self.worker = None
        gc.collect()
