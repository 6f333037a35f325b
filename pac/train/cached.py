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
    return CacheKey(model_fingerprint or backbone.fingerprint(), spec.cached_taps(), quantization,
                    backbone.tokenizer.fingerprint(),
                    spec.record_final() if spec.top_layers else -1)


def _key(item: Encoded) -> str:
    return sample_key(item.input_ids, item.decoder_ids)


def _stack_lengths(item: Encoded) -> list[int]:
    return [len(item.input_ids)] + ([len(item.decoder_ids)] if item.decoder_ids is not None else [])


def split_states(out, spec, group: list[Encoded]) -> list[list[torch.Tensor]]:
    """Per sample: the needed taps of every stack, then the final state, each cut to its real length."""
    return record_tensors(out.taps, out.final, spec, group)


def record_tensors(taps, final: torch.Tensor | None, spec, group: list[Encoded]) -> list[list[torch.Tensor]]:
    """Per sample: the cached taps of every stack (SideSpec.cached_taps), then the final state that
    SideSpec.record_final names (if any), each cut to its real length and detached."""
    final_stack = spec.record_final()
    records = []
    for row, item in enumerate(group):
        lengths = _stack_lengths(item)
        tensors = [taps[s][i][row, : lengths[s]].detach() for s, kept in enumerate(spec.cached_taps()) for i in kept]
        if final_stack is not None:
            tensors.append(final[row, : lengths[final_stack]].detach())
        records.append(tensors)
    return records


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
        model.release_backbone()
        gc.collect()

    def _backbone(self, model: ParallelAdaptersModel):
        if model.backbone is None:
            if self.load_backbone is None:
                raise CacheCorruption("a cached record is missing or corrupt and no backbone is available")
            log.warning("loading the backbone again to recompute cache records")
            model.backbone = self.load_backbone()
        return model.backbone

    def tap_dtype(self) -> torch.dtype:
        """The batch tensors' dtype: a 16-bit cache's own format (exact; the side blocks widen each state
        as they use it and keep only the 16-bit one for backward: half the memory for a batch's states),
        else float32."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cache.precision, torch.float32)

    def _read_batch(self, spec, group: list[Encoded], batch: dict):
        """Decode every record of the batch straight into padded batch tensors (one copy per value)."""
        masks = [batch["attention_mask"]] + ([batch["decoder_attention_mask"]] if len(spec.stack_sizes) > 1 else [])
        width = spec.hidden_size
        dtype = self.tap_dtype()
        taps, outs = [], []
        for s, kept in enumerate(spec.cached_taps()):
            stack = [None] * (spec.stack_sizes[s] + 1)
            for i in kept:
                stack[i] = torch.zeros(len(group), masks[s].shape[1], width, dtype=dtype)
                outs.append((stack[i], s))
            taps.append(stack)
        final_stack = spec.record_final()
        final = None if final_stack is None else torch.zeros(len(group), masks[final_stack].shape[1], width)
        if final is not None:
            outs.append((final, final_stack))
        arrays = [((tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy(), s)
                  for tensor, s in outs]
        for row, item in enumerate(group):
            lengths = _stack_lengths(item)
            self.cache.read_into(_key(item), [array[row, : lengths[s]] for array, s in arrays])
        return taps, final

    def forward(self, model: ParallelAdaptersModel, group: list[Encoded], batch: dict) -> HeadOutput:
        spec = model.side.spec
        device = next(model.side.parameters()).device
        if self.all_cached(group):
            try:
                taps, final = self._read_batch(spec, group, batch)
            except CacheCorruption as error:
                log.warning("%s; recomputing it", error)
            else:
                self.cache_reads += 1
                taps = [[None if t is None else t.to(device) for t in stack] for stack in taps]
                return model.forward_from_states(taps, None if final is None else final.to(device), batch)
        self._backbone(model)
        output, taps, final = model.forward_recorded(batch)  # the exact states, as the uncached path uses them
        self.backbone_runs += 1
        for item, record in zip(group, record_tensors(taps, final, spec, group), strict=True):
            if _key(item) not in self.cache:
                self.cache.put(_key(item), record)
        return output
