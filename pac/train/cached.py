"""Training Parallel Adapters with the activation cache: epoch 1 runs the backbone and keeps its
states; later epochs (and later jobs on the same data and backbone) read them and never run the
backbone, which is released from memory as soon as every sample is cached."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch

from pac.cache import ActivationCache, CacheCorruption, CacheKey, sample_key
from pac.data.batching import Encoded
from pac.heads import HeadOutput
from pac.techniques.build import ParallelAdaptersModel

log = logging.getLogger(__name__)


def cache_key_for(backbone, spec, quantization: str, model_fingerprint: str | None = None) -> CacheKey:
    return CacheKey(model_fingerprint or backbone.fingerprint(), spec.needed_taps(), quantization,
                    backbone.tokenizer.fingerprint())


def _key(item: Encoded) -> str:
    return sample_key(item.input_ids, item.decoder_ids)


def _stack_lengths(item: Encoded) -> list[int]:
    return [len(item.input_ids)] + ([len(item.decoder_ids)] if item.decoder_ids is not None else [])


def split_states(out, spec, group: list[Encoded]) -> list[list[torch.Tensor]]:
    """Per sample: the needed taps of every stack, then the final state, each cut to its real length."""
    records = []
    for row, item in enumerate(group):
        lengths = _stack_lengths(item)
        tensors = [out.taps[s][i][row, : lengths[s]] for s, needed in enumerate(spec.needed_taps()) for i in needed]
        records.append([*tensors, out.final[row, : lengths[-1]]])
    return records


def join_states(records: list[list[torch.Tensor]], spec, batch: dict[str, torch.Tensor]):
    """Records -> (taps per stack with None where not needed, final), padded like `batch`."""
    masks = [batch["attention_mask"]] + ([batch["decoder_attention_mask"]] if "decoder_attention_mask" in batch else [])

    def stacked(index: int, length: int) -> torch.Tensor:
        out = torch.zeros(len(records), length, records[0][index].shape[-1])
        for row, record in enumerate(records):
            out[row, : record[index].shape[0]] = record[index]
        return out

    taps, position = [], 0
    for s, needed in enumerate(spec.needed_taps()):
        stack = [None] * (spec.stack_sizes[s] + 1)
        for i in needed:
            stack[i] = stacked(position, masks[s].shape[1])
            position += 1
        taps.append(stack)
    return taps, stacked(position, masks[-1].shape[1])


class CachedStates:
    """Supplies the side network's inputs for each batch: from the backbone or from the cache."""

    def __init__(self, cache: ActivationCache, load_backbone: Callable[[], object] | None = None) -> None:
        self.cache = cache
        self.load_backbone = load_backbone  # for recomputing corrupt records once the backbone is released
        self.backbone_runs = 0
        self.cache_reads = 0

    def all_cached(self, items: list[Encoded]) -> bool:
        return all(_key(item) in self.cache for item in items)

    def release_backbone(self, model: ParallelAdaptersModel) -> None:
        model.backbone = None
        gc.collect()

    def _backbone(self, model: ParallelAdaptersModel):
        if model.backbone is None:
            if self.load_backbone is None:
                raise CacheCorruption("a cached record is missing or corrupt and no backbone is available")
            log.warning("loading the backbone again to recompute cache records")
            model.backbone = self.load_backbone()
        return model.backbone

    def forward(self, model: ParallelAdaptersModel, group: list[Encoded], batch: dict) -> HeadOutput:
        spec = model.side.spec
        records: list[list[torch.Tensor] | None] = []
        for item in group:
            key = _key(item)
            try:
                records.append(self.cache.get(key) if key in self.cache else None)
            except CacheCorruption as error:
                log.warning("%s; recomputing it", error)
                records.append(None)
        missing = [row for row, record in enumerate(records) if record is None]
        if missing and len(missing) == len(group):
            out = self._backbone(model).run(batch)  # the exact states, as the uncached path uses them
            self.backbone_runs += 1
            for item, record in zip(group, split_states(out, spec, group), strict=True):
                self.cache.put(_key(item), record)
            return model.forward_from_states(out.taps, out.final, batch)
        if missing:
            out = self._backbone(model).run(batch)
            self.backbone_runs += 1
            fresh = split_states(out, spec, group)
            for row in missing:
                self.cache.put(_key(group[row]), fresh[row])
                records[row] = fresh[row]
        self.cache_reads += 1
        taps, final = join_states(records, spec, batch)
        device = next(model.side.parameters()).device
        taps = [[None if t is None else t.to(device) for t in stack] for stack in taps]
        return model.forward_from_states(taps, final.to(device), batch)
