"""What a daemon does for a training job: one phase-1 stage replica, then one phase-2 member.

`StageHost` (phase 1) loads backbone layers [first, end) from the device's own model store, builds the
stage's side blocks (and the head on the last stage) from the tensors the controller sends, and runs a
mini-batch's 1F1B operations: what it computes goes straight to the neighbouring stages' devices and
comes back from them through a `Transport` (pacd: TensorStream and Collective over mutual TLS), never
through the controller. Every hidden state it computes is written to its activation-cache shard.

`Phase2Host` holds the whole side network and head (no backbone), a cache holding every layer's states
of the samples this device trains (its own shard's records plus the ones fetched from other devices),
and trains its rows of every step, summing gradients over all devices each step.

A piece of a micro-batch travels as a stream "<job>/<F|B><first row>": first a manifest (kind "other",
the names it carries as UTF-8 JSON), then one tensor per name. See docs/cluster.md.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pac.cache import ActivationCache, CacheKey
from pac.collective import RingGroup
from pac.data.batching import Encoded, collate
from pac.errors import ConfigError, PacError
from pac.heads import Head, HeadConfig
from pac.models.backbone import FrozenLMHead, load_backbone
from pac.pipeline.build import build_stage
from pac.pipeline.layers import LayerSlice
from pac.pipeline.schedule import one_f_one_b
from pac.pipeline.split import loss_count, route, row_ranges
from pac.quant import quantize_backbone
from pac.side.network import SideConfig, SideNetwork, SideSpec, side_spec
from pac.techniques.build import ParallelAdaptersModel, trainable_parameters
from pac.train.cached import CachedStates
from pac.train.loop import TrainConfig, apply_side_options, make_optimizer

log = logging.getLogger(__name__)

FORWARD_KINDS = {"hidden": "hidden", "encoder_hidden": "encoder_hidden", "side": "side",
                 "side_memory": "side_memory"}
BACKWARD_KINDS = {"side": "side_grad", "side_memory": "side_memory_grad"}
FINAL_TAP = (-1,)  # marks, in a shard's cache key, that its records end with the head's input


class JobError(PacError):
    """A training job on this device cannot go on; the message says why."""


class Transport(Protocol):
    """How a stage reaches the other devices of its job (pacd: SyncPeer over the daemon's PeerNode)."""

    def send(self, target: str, tensor: torch.Tensor, *, stream: str, step: int, micro: int, kind: str,
             codec: str) -> None: ...

    def receive(self, stream: str, step: int, micro: int, kind: str, timeout_s: float) -> torch.Tensor: ...

    def flush(self) -> None: ...  # wait until every tensor sent so far was delivered

    def allreduce_(self, tensors: list[torch.Tensor], group: RingGroup, op_id: int) -> None: ...


def pack(tensors: dict[str, torch.Tensor]) -> bytes:
    return save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def unpack(data: bytes) -> dict[str, torch.Tensor]:
    return load_tensors(data) if data else {}


def load_model(name: str, quantization: str, seed: int):
    """The frozen backbone as every device of a job loads it (the cache key is its checkpoint's digest)."""
    backbone = load_backbone(name, seed=seed)
    fingerprint = backbone.fingerprint()  # before quantising and before a stage releases layers
    quantize_backbone(backbone, quantization)
    return backbone, fingerprint


# ---- the job's optimiser state, moved between devices by parameter name ---------------------------------
def optimizer_tensors(module: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    """AdamW's per-parameter state as "opt.<parameter name>.<field>" tensors."""
    if optimizer is None:
        return {}
    out = {}
    for name, parameter in module.named_parameters():
        for key, value in optimizer.state.get(parameter, {}).items():
            if torch.is_tensor(value):
                out[f"opt.{name}.{key}"] = value
    return out


def load_optimizer_tensors(module: torch.nn.Module, optimizer, tensors: dict[str, torch.Tensor]) -> int:
    loaded = 0
    for name, parameter in module.named_parameters():
        state = {key.rsplit(".", 1)[1]: value.clone() for key, value in tensors.items()
                 if key.startswith(f"opt.{name}.") and "." not in key[len(f"opt.{name}."):]}
        if state:
            optimizer.state[parameter] = state
            loaded += 1
    return loaded


def advance_schedule(scheduler, steps: int) -> None:
    """Bring a fresh learning-rate schedule to where `steps` optimiser steps left it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
        for _ in range(steps):
            scheduler.step()


# ---- phase 1 ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    """What the controller tells one stage replica (JSON on the wire)."""

    job_id: str
    model: str
    quantization: str
    seed: int
    stage: int
    replica: int
    first: int
    end: int
    side: dict  # SideConfig: reduction_factor, layers
    head: dict  # HeadConfig
    train: dict  # TrainConfig
    total_steps: int
    shares: list[list[int]]  # per stage, each replica's share of a micro-batch's rows
    addresses: list[list[str]]  # per stage, each replica's daemon ("host:port")
    pad_id: int = 0
    codec: str = "none"  # of forward activations on the wire: none | fp16 | int8
    cache_precision: str | None = "fp16"  # None: no activation cache
    cache_keep: bool = False
    timeout_s: float = 120.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> StageSpec:
        try:
            return StageSpec(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as error:
            raise ConfigError(f"stage spec: {error}") from None

    @property
    def num_stages(self) -> int:
        return len(self.shares)

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1


@dataclass
class MicroIn:
    """One micro-batch as a replica receives it: the whole micro-batch's row count, its own rows."""

    index: int
    rows: int
    batch: dict[str, torch.Tensor] | None  # this replica's rows; None when it has none
    keys: list[str] = field(default_factory=list)  # per row: the sample's cache key
    lengths: list[list[int]] = field(default_factory=list)  # per row, per stack: real tokens


def side_config(data: dict) -> SideConfig:
    layers = data.get("layers")
    return SideConfig(int(data.get("reduction_factor", 8)), tuple(layers) if layers is not None else None)


def stage_taps(spec: SideSpec, layers: LayerSlice) -> list[tuple[int, int]]:
    """The (stack, i) hidden states this stage computes that the side network reads, in record order."""
    needed = spec.needed_taps()
    taps = []
    for segment in layers.segments():
        computed = ([0] if segment.starts_stack else []) + list(range(segment.first + 1, segment.end + 1))
        taps += [(segment.stack, i) for i in computed if i in needed[segment.stack]]
    return taps


def shard_key(fingerprint: str, taps: list[tuple[int, int]], stacks: int, last: bool, quantization: str,
              tokenizer_fingerprint: str) -> CacheKey:
    per_stack = tuple(tuple(i for s, i in taps if s == stack) for stack in range(stacks))
    return CacheKey(fingerprint, per_stack + ((FINAL_TAP,) if last else ()), quantization, tokenizer_fingerprint)


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


# ---- phase 2 ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase2Spec:
    job_id: str
    model: str  # to recompute a corrupt record (the backbone is loaded only then)
    quantization: str
    seed: int
    side_spec: dict
    head: dict
    train: dict
    total_steps: int
    steps_done: int  # optimiser steps already taken (phase 1)
    rank: int
    members: list[str]  # every phase-2 device, ring order
    fingerprint: str
    tokenizer_fingerprint: str
    pad_id: int = 0
    lm_head_scale: float | None = None
    cache_precision: str = "fp16"
    cache_keep: bool = False
    timeout_s: float = 120.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Phase2Spec:
        try:
            return Phase2Spec(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as error:
            raise ConfigError(f"phase-2 spec: {error}") from None


def encoded_from_json(item: dict) -> Encoded:
    target = item["target"]
    return Encoded(tuple(item["input_ids"]), tuple(target) if isinstance(target, list) else target,
                   tuple(item["decoder_ids"]) if item.get("decoder_ids") is not None else None)


def encoded_to_json(key: str, item: Encoded) -> dict:
    target = list(item.target) if isinstance(item.target, tuple) else item.target
    return {"key": key, "input_ids": list(item.input_ids), "target": target,
            "decoder_ids": list(item.decoder_ids) if item.decoder_ids is not None else None}


class Phase2Host:
    """This device's part of phase 2: the side network and head, from the cache, data parallel."""

    def __init__(self, spec: Phase2Spec, tensors: dict[str, torch.Tensor], cache_root: Path,
                 transport: Transport) -> None:
        self.spec, self.transport = spec, transport
        side = SideSpec.from_dict(spec.side_spec)
        head_config = HeadConfig(**spec.head)
        lm_head = None
        if head_config.task == "lm":
            if "lm_head.weight" not in tensors:
                raise JobError("a language-model job needs the frozen LM head ('lm_head.weight') in phase 2")
            lm_head = FrozenLMHead(tensors["lm_head.weight"], tensors.get("lm_head.bias"), spec.lm_head_scale)
        self.model = ParallelAdaptersModel(None, SideNetwork(side), Head(head_config, side.hidden_size,
                                                                          side.family, lm_head))
        self.model._identity = (spec.model, spec.fingerprint)
        missing, unexpected = self.model.load_state_dict(
            {k: v for k, v in tensors.items() if k.startswith(("side.", "head."))}, strict=False)
        trained_missing = [k for k in missing if k.startswith(("side.", "head."))]
        if trained_missing:
            raise JobError(f"phase 2 was not sent {len(trained_missing)} trained tensors, e.g. {trained_missing[:3]}")
        self.config = TrainConfig(**spec.train)
        apply_side_options(self.model.side, self.config)
        torch.manual_seed(self.config.seed)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.config, spec.total_steps)
        load_optimizer_tensors(self.model, self.optimizer, tensors)
        advance_schedule(self.scheduler, spec.steps_done)
        key = CacheKey(spec.fingerprint, side.needed_taps(), spec.quantization, spec.tokenizer_fingerprint)
        self.cache = ActivationCache(cache_root, key, spec.cache_precision, keep=spec.cache_keep)
        self.states = CachedStates(self.cache, load_backbone=self._load_backbone)
        self.items: dict[str, Encoded] = {}
        self.steps_done = spec.steps_done

    def _load_backbone(self):
        backbone, _ = load_model(self.spec.model, self.spec.quantization, self.spec.seed)
        return backbone

    @property
    def group(self) -> RingGroup | None:
        if len(self.spec.members) < 2:
            return None
        return RingGroup(f"{self.spec.job_id}/phase2", self.spec.rank, tuple(self.spec.members),
                         step_timeout_s=self.spec.timeout_s)

    def add_samples(self, samples: list[dict]) -> None:
        for item in samples:
            self.items[item["key"]] = encoded_from_json(item)

    def train_epoch(self, first_step: int, steps: list[dict]) -> Iterator[dict]:
        """Each step: forward/backward of this device's rows from the cache, loss scaled by its share of
        the mini-batch, AllReduce of the gradients over every device, clipping, AdamW."""
        parameters = trainable_parameters(self.model)
        task, family = self.model.head.config.task, self.model.side.spec.family
        group = self.group
        self.model.train()
        for offset, step in enumerate(steps):
            tick = time.perf_counter()
            keys = step["keys"]
            unknown = [k for k in keys if k not in self.items]
            if unknown:
                raise JobError(f"step {first_step + offset}: {len(unknown)} samples were never sent to this device")
            share = 0.0
            if keys:
                group_items = [self.items[k] for k in keys]
                batch = collate(group_items, self.spec.pad_id, task)
                out = self.states.forward(self.model, group_items, batch)
                count = loss_count(batch, task, family)
                scaled = out.loss * (count / step["loss_total"]) if count else out.loss.sum() * 0.0
                scaled.backward()
                share = float(scaled.detach())
            for p in parameters:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            reduce_s = 0.0
            if group is not None:
                began = time.perf_counter()
                self.transport.allreduce_([p.grad for p in parameters], group, first_step + offset)
                reduce_s = time.perf_counter() - began
            torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps_done += 1
            yield {"step": first_step + offset, "loss": share, "samples": len(keys),
                   "seconds": time.perf_counter() - tick, "allreduce_s": reduce_s}

    def state(self, optimizer: bool) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {k: v for k, v in self.model.state_dict().items() if k.startswith(("side.", "head."))}
        if optimizer:
            tensors.update(optimizer_tensors(self.model, self.optimizer))
        return tensors, {"steps_done": self.steps_done}


def join_records(pieces: list[tuple[bytes, list]]) -> tuple[bytes, list]:
    """A full cache record from its stage shards' records, in stage order (records concatenate)."""
    return b"".join(p[0] for p in pieces), [tuple(s) for p in pieces for s in p[1]]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
