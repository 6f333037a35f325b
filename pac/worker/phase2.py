"""This device's part of phase 2: the whole side network and head, trained from the cache.

`Phase2Member` holds no backbone; its cache holds every layer's states of the samples this device trains
(its own shard's records plus the ones fetched from other devices), and it trains its rows of every step,
summing gradients over all devices each step.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from pac.cache import ActivationCache, CacheKey
from pac.collective import RingGroup
from pac.data.batching import Encoded, collate
from pac.errors import ConfigError
from pac.heads import Head
from pac.models.backbone import FrozenLMHead
from pac.pipeline.split import loss_count
from pac.side.network import SideNetwork
from pac.techniques.build import ParallelAdaptersModel, trainable_parameters
from pac.techniques.top import load_top_tensors, trained_top_tensors
from pac.train.cached import CachedStates
from pac.train.loop import apply_side_options, make_optimizer
from pac.worker.errors import JobError
from pac.worker.spec import EpochStep, GatherSample, Phase2Spec, StepReport, load_model
from pac.worker.stage import Transport
from pac.worker.tensors import advance_schedule, load_optimizer_tensors, optimizer_tensors

log = logging.getLogger(__name__)


class Phase2Member:
    """This device's part of phase 2: the side network and head, from the cache, data parallel."""

    def __init__(self, spec: Phase2Spec, tensors: dict[str, torch.Tensor], cache_root: Path,
                 transport: Transport, kept_top: tuple | None = None) -> None:
        """`kept_top`: (tuned top layers, their backbone) this device trained in phase 1's last stage, taken
        over instead of loading the model again."""
        self.spec, self.transport = spec, transport
        side, head_config = spec.side_spec, spec.head
        key = CacheKey(spec.fingerprint, side.cached_taps(), spec.quantization, spec.tokenizer_fingerprint)
        self.cache = ActivationCache(cache_root, key, spec.cache_precision, keep=spec.cache_keep)
        self.items: dict[str, Encoded] = {}
        self.steps_done = spec.steps_done
        self.model = None
        if spec.holds_only:
            return  # it serves its cache's whole records to the members (FetchCache), nothing more
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
        if side.top_layers != spec.top.count:
            raise JobError(f"the side network is shaped for {side.top_layers} tuned top layers, phase 2 was asked "
                           f"to tune {spec.top.count}")
        if spec.top.count:
            self._load_top(tensors, kept_top)
        if not side.has_blocks:
            self.model.side.requires_grad_(False)  # no side network (`side_layers = []`): nothing reads it
        self.config = spec.train
        apply_side_options(self.model.side, self.config)
        torch.manual_seed(self.config.seed)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.config, spec.total_steps)
        load_optimizer_tensors(self.model, self.optimizer, tensors)
        advance_schedule(self.scheduler, spec.steps_done)
        self.states = CachedStates(self.cache, load_backbone=self._load_backbone)

    def _load_top(self, tensors: dict[str, torch.Tensor], kept: tuple | None) -> None:
        """The tuned top layers (those this device's last stage trained, or from its model store), with the
        job's trained tensors; every other weight of the backbone is dropped (an epoch from the cache runs
        only these layers)."""
        if kept is None:  # only the tuned layers (and the final norm) are read from the checkpoint
            layers = sum(self.spec.side_spec.stack_sizes)
            kept = (None, load_model(self.spec.model, self.spec.quantization, self.spec.seed,
                                     layers=(layers - self.spec.top.count, layers))[0])
        top, backbone = kept
        if backbone.fingerprint() != self.spec.fingerprint:
            raise JobError(f"this device's {self.spec.model} has other weights (fingerprint "
                           f"{backbone.fingerprint()[:12]}, the job's {self.spec.fingerprint[:12]}): every device "
                           f"must have the same model")
        if top is None:
            top = self.spec.top.build(backbone)
        else:
            log.info("job %s: phase 2 takes over the tuned top layers its last stage trained here (no model load)",
                     self.spec.job_id)
        self.model.backbone = backbone
        self.model.top = top
        self.model.top.to(next(self.model.side.parameters()).device)
        try:
            load_top_tensors(self.model.top, tensors, "phase 2")
        except ConfigError as error:
            raise JobError(str(error)) from None
        self.model.release_backbone()
        gc.collect()

    def _load_backbone(self):
        backbone, _ = load_model(self.spec.model, self.spec.quantization, self.spec.seed)
        return backbone

    @property
    def group(self) -> RingGroup | None:
        if len(self.spec.members) < 2:
            return None
        return RingGroup(f"{self.spec.job_id}/phase2", self.spec.rank, tuple(self.spec.members),
                         step_timeout_s=self.spec.timeout_s, wire=self.spec.train.allreduce_precision)

    def add_samples(self, samples: Iterable[GatherSample]) -> None:
        for sample in samples:
            self.items[sample.key] = sample.item

    def train_epoch(self, first_step: int, steps: list[EpochStep]) -> Iterator[StepReport]:
        """Each step: forward/backward of this device's rows from the cache, loss scaled by its share of
        the mini-batch, AllReduce of the gradients over every device, clipping, AdamW."""
        if self.model is None:
            raise JobError("this device only holds cached states for phase 2; it trains nothing")
        parameters = trainable_parameters(self.model)
        task, family = self.model.head.config.task, self.model.side.spec.family
        group = self.group
        self.model.train()
        for offset, step in enumerate(steps):
            tick = time.perf_counter()
            keys = step.keys
            unknown = [k for k in keys if k not in self.items]
            if unknown:
                raise JobError(f"step {first_step + offset}: {len(unknown)} samples were never sent to this device")
            share = 0.0
            if keys:
                group_items = [self.items[k] for k in keys]
                batch = collate(group_items, self.spec.pad_id, task)
                out = self.states.forward(self.model, group_items, batch)
                count = loss_count(batch, task, family)
                scaled = out.loss * (count / step.loss_total) if count else out.loss.sum() * 0.0
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
            yield StepReport(first_step + offset, share, len(keys), time.perf_counter() - tick, reduce_s)

    def state(self, optimizer: bool) -> tuple[dict[str, torch.Tensor], int]:
        """The trained tensors (and the optimiser's), and the optimiser steps they have taken."""
        if self.model is None:
            raise JobError("this device only holds cached states for phase 2; it trains nothing")
        tensors = {k: v for k, v in self.model.state_dict().items() if k.startswith(("side.", "head."))}
        tensors |= trained_top_tensors(self.model.top)
        if optimizer:
            tensors.update(optimizer_tensors(self.model, self.optimizer))
        return tensors, self.steps_done


def join_records(pieces: list[tuple[bytes, list]]) -> tuple[bytes, list]:
    """A full cache record from its stage shards' records, in stage order (records concatenate)."""
    return b"".join(p[0] for p in pieces), [tuple(s) for p in pieces for s in p[1]]


WHOLE = -1  # the "stage" of a fetch of whole records from a phase-2 cache


def whole_fetches(samples: list[GatherSample], me: str) -> dict[str, list[str]]:
    """Per device, the keys of `samples` whose whole records it is named for (`whole`), not this device."""
    out: dict[str, list[str]] = {}
    for sample in samples:
        if sample.whole and sample.whole != me:
            out.setdefault(sample.whole, []).append(sample.key)
    return out


def fetches_for(samples: list[GatherSample], local_stage: int | None, me: str) -> dict[tuple[str, int], list[str]]:
    """Which records to fetch from whom: per (source device, stage), the keys of `samples` (each with its
    `sources`, the device holding each stage's part) that this device (`me`, holding `local_stage`'s
    shard) does not hold itself. A sample some part of which no device holds (source "") is not fetched:
    the member recomputes it when it first trains on it."""
    fetches: dict[tuple[str, int], list[str]] = {}
    for sample in samples:
        if not all(sample.sources):
            continue
        for stage, source in enumerate(sample.sources):
            if not (stage == local_stage and source == me):
                fetches.setdefault((source, stage), []).append(sample.key)
    return fetches


def assemble_records(cache: ActivationCache, samples: list[GatherSample], stages: int, local_stage: int | None, me: str,
                     shard: ActivationCache | None, fetched: dict[tuple[str, int], dict[str, tuple]],
                     whole: dict[str, tuple] | None = None) -> int:
    """Write `whole` records as they are, and each of `samples`' full record into `cache` from its stage
    parts: this device's own shard where it holds the part, else what was fetched. Returns the bytes read
    locally."""
    for key, (record, shapes) in (whole or {}).items():
        cache.put_raw(key, record, shapes)
    local = 0
    for sample in samples:
        if not all(sample.sources):
            continue  # recomputed from the backbone when first trained on (pac.train.cached.CachedStates)
        pieces = []
        for stage in range(stages):
            source = sample.sources[stage]
            if stage == local_stage and source == me:
                piece = shard.get_raw(sample.key)
                local += len(piece[0])
            else:
                piece = fetched[(source, stage)][sample.key]
            pieces.append(piece)
        record, shapes = join_records(pieces)
        cache.put_raw(sample.key, record, shapes)
    cache.flush()
    return local
