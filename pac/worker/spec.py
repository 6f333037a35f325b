"""What the controller sends a device of a job: the stage and phase-2 specs, micro-batches, samples.

Also the facts both sides derive alike: which hidden states a stage caches (`stage_taps`), the key of a
stage's cache shard, and how every device of a job loads its frozen backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pac.cache import CacheKey
from pac.data.batching import Encoded
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.pipeline.layers import LayerSlice
from pac.quant import quantize_backbone
from pac.side.network import SideConfig, SideSpec
from pac.techniques.top import TopConfig
from pac.train.loop import TrainConfig

FINAL_TAP = (-1,)  # marks, in a shard's cache key, that its records end with the head's input


def load_model(name: str, quantization: str, seed: int, layers: tuple[int, int] | None = None,
               lm_head: bool = False):
    """The frozen backbone as every device of a job loads it (the cache key is its checkpoint's digest).

    `layers` = (first, end): only those layers are read from the checkpoint (pac.models.partial), with the
    word embeddings if they start a stack and the LM head if `lm_head` and they end the model; the rest of
    the model is never in memory. None: the whole model."""
    if layers is None:
        backbone = load_backbone(name, seed=seed)
    else:
        from pac.models.partial import load_partial
        from pac.pipeline.backbone_stage import release_outside

        def release(whole) -> None:
            kept = LayerSlice(layers[0], layers[1], tuple(len(stack) for stack in whole.stacks))
            release_outside(whole, kept, lm_head and kept.is_last and whole.has_lm_head)

        backbone = load_partial(name, release, seed=seed)
    fingerprint = backbone.fingerprint()  # before quantising and before a stage releases layers
    quantize_backbone(backbone, quantization)
    return backbone, fingerprint


@dataclass(frozen=True)
class StageSpec:
    """What the controller tells one stage replica (pac.v1.StageSpec on the wire)."""

    job_id: str
    model: str
    quantization: str
    seed: int
    stage: int
    replica: int
    first: int
    end: int
    side: SideConfig
    head: HeadConfig
    train: TrainConfig
    total_steps: int
    shares: list[list[int]]  # per stage, each replica's share of a micro-batch's rows
    addresses: list[list[str]]  # per stage, each replica's daemon ("host:port")
    pad_id: int = 0
    codec: str = "none"  # of forward activations on the wire: none | fp16 | int8
    cache_precision: str | None = "fp16"  # None: no activation cache
    cache_keep: bool = False
    timeout_s: float = 120.0
    cache_directory: str | None = None  # None: the daemon's state directory
    steps_done: int = 0  # optimiser steps the state sent has taken (a resumed job); its optimiser state comes too
    top: TopConfig = TopConfig()  # the backbone's last layers tuned too (all in the last stage); count 0: none
    run_ahead: int = 0  # mini-batches the frozen layers may run ahead (RunStep ahead); 0: lock-step
    evaluation_precision: str | None = None  # of its evaluation records (the controller's); None: cache_precision's

    def __post_init__(self) -> None:
        if self.side.top_layers != self.top.count:
            raise ValueError(f"side.top_layers {self.side.top_layers} and top.count {self.top.count} differ")

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


def stage_taps(spec: SideSpec, layers: LayerSlice) -> list[tuple[int, int]]:
    """The (stack, i) hidden states this stage computes that a cache record keeps (the side network's
    taps, and with tuned top layers their input instead of the states above it), in record order."""
    needed = spec.cached_taps()
    taps = []
    for segment in layers.segments():
        computed = ([0] if segment.starts_stack else []) + list(range(segment.first + 1, segment.end + 1))
        taps += [(segment.stack, i) for i in computed if i in needed[segment.stack]]
    return taps


def shard_ends_with_final(spec: SideSpec, last: bool) -> bool:
    """Whether a stage's shard records end with a final state (SideSpec.record_final): the last stage's."""
    return last and spec.record_final() is not None


def shard_key(fingerprint: str, taps: list[tuple[int, int]], stacks: int, last: bool, quantization: str,
              tokenizer_fingerprint: str) -> CacheKey:
    per_stack = tuple(tuple(i for s, i in taps if s == stack) for stack in range(stacks))
    return CacheKey(fingerprint, per_stack + ((FINAL_TAP,) if last else ()), quantization, tokenizer_fingerprint)


@dataclass(frozen=True)
class Phase2Spec:
    """What the controller tells one phase-2 member (pac.v1.Phase2Spec on the wire)."""

    job_id: str
    model: str  # to recompute a corrupt record (the backbone is loaded only then)
    quantization: str
    seed: int
    side_spec: SideSpec
    head: HeadConfig
    train: TrainConfig
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
    cache_directory: str | None = None
    holds_only: bool = False  # not a member: serves the whole records of its kept cache, trains nothing
    top: TopConfig = TopConfig()  # the backbone's last layers tuned too: the member loads them (count 0: none)


@dataclass(frozen=True)
class GatherSample:
    """A sample a phase-2 member trains, and where each of its stage parts is cached."""

    key: str
    item: Encoded
    sources: tuple[str, ...]  # per phase-1 stage: the address whose shard holds that part
    whole: str = ""  # a device whose phase-2 cache holds the whole record (tried first); "": none


@dataclass(frozen=True)
class GatherPlan:
    """What one phase-2 member gathers before it trains."""

    me: str  # this member's address, as the sources name it
    stages: int  # phase-1 stages: the parts of every record
    samples: tuple[GatherSample, ...]


@dataclass(frozen=True)
class EpochStep:
    """One phase-2 step of one member: its samples, and the whole step's loss count (all members)."""

    keys: tuple[str, ...]
    loss_total: int


@dataclass(frozen=True)
class StepReport:
    """What a phase-2 member reports after a step."""

    step: int
    loss: float  # this member's share of the step's loss
    samples: int
    seconds: float
    allreduce_s: float
