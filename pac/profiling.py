"""Measure a model on this device, for the planner: per-layer backbone forward time, side-block forward
and backward time at several batch sizes, and the bytes of parameters and activations per layer.

Times are medians of `repeats` runs after one warm-up, taken with hooks around each layer of a real
forward (and backward) pass on a batch of `seq_len` tokens. Layers are numbered across stacks
(encoder then decoder for encoder-decoder models).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from pac.heads import Head, HeadConfig
from pac.models.backbone import load_backbone
from pac.techniques.build import TechniqueConfig, build_model, model_masks


@dataclass(frozen=True)
class ModelMeasurement:
    model: str
    family: str
    hidden_size: int  # d
    side_size: int  # r
    seq_len: int
    batch_sizes: tuple[int, ...]
    param_dtype_bytes: int
    forward_s: dict[int, list[float]]  # batch size -> per layer: backbone layer forward
    side_forward_s: dict[int, list[float]]  # batch size -> per layer: side block forward
    side_backward_s: dict[int, list[float]]  # batch size -> per layer: side block backward
    param_bytes: list[int]  # per layer: backbone weights
    side_param_bytes: list[int]  # per layer: side block weights (fp32, trainable)
    activation_bytes_per_sample: list[float]  # per layer: side activations kept for backward
    hidden_bytes_per_sample: float  # one h_i (what a stage sends forward, with a_i)
    embedding_param_bytes: int
    head_param_bytes: int
    side_extra_param_bytes: int  # Down_0, Up, final norm and head
    transient_bytes_per_sample: float  # a backbone layer's scratch memory during its forward
    threads: int = 0  # torch compute threads the measurement ran with (co-located devices share cores)
    quantization: str = "none"  # how the backbone was held while timed (byte sizes are of its checkpoint)
    sampled_layers: list[int] | None = None  # a model too large to time whole: the layers timed (the rest alike)
    # Fixed costs beside the layers: one forward or backward call's own time (the model's forward around
    # its layers, the side network's, autograd's start; the mean of the three, at the smallest batch),
    # and an AdamW step over the side network and head per trained parameter.
    call_s: float = 0.0
    optimizer_s_per_param: float = 0.0
    # The activation cache as the runtime uses it (fp16 records of every tap of a sample, on this device's
    # disk): bytes stored per second written (put, flush) and read back (read_into). 0: not measured.
    cache_write_bytes_per_s: float = 0.0
    cache_read_bytes_per_s: float = 0.0
    # Layers that compute real tokens only (pac.models.unpadded): their forward on the middle batch size with
    # the second half of every sample padded, against none padded (1.0: the layers compute the padding too).
    half_padded_forward_ratio: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def _nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class _LayerTimer:
    """Forward (and optionally backward) wall time of each module in a list, via hooks."""

    def __init__(self, modules, backward: bool = False) -> None:
        self.forward = [0.0] * len(modules)
        self.backward = [0.0] * len(modules)
        self._start: dict[int, float] = {}
        self._handles = []
        for index, module in enumerate(modules):
            self._handles.append(module.register_forward_pre_hook(self._begin(index, "f")))
            self._handles.append(module.register_forward_hook(self._end(index, "f")))
            if backward:
                self._handles.append(module.register_full_backward_pre_hook(self._begin(index, "b")))
                self._handles.append(module.register_full_backward_hook(self._end(index, "b")))

    def _begin(self, index, kind):
        def hook(*_):
            self._start[(index, kind)] = time.perf_counter()
        return hook

    def _end(self, index, kind):
        def hook(*_):
            elapsed = time.perf_counter() - self._start.pop((index, kind))
            (self.forward if kind == "f" else self.backward)[index] += elapsed
        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _median(runs: list, kind: int) -> list[float]:
    return [statistics.median(run[kind][i] for run in runs) for i in range(len(runs[0][kind]))]


def _batch(backbone, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    vocab = backbone.config.vocab_size
    ids = torch.randint(3, vocab, (batch_size, seq_len), generator=generator).to(backbone.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(batch_size, dtype=torch.long)}
    if backbone.family == "encoder-decoder":
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = ids, torch.ones_like(ids)
    return batch


SAMPLED_LAYERS = 2  # per stack, when the model is too large for this device to profile whole


def measure(model: str, batch_sizes: list[int], seq_len: int, reduction_factor: int = 8,
            repeats: int = 2, quantization: str = "none", memory_budget: int | None = None) -> ModelMeasurement:
    """`memory_budget`: a model whose weights take more than half of it is not loaded whole: the first
    SAMPLED_LAYERS layers of each stack are read from the checkpoint (pac.models.partial) and timed, and
    every other layer of the stack is given their mean time (a stack's layers are alike); sizes come from
    the model's shapes, which need no weights."""
    from pac.quant import quantize_backbone

    sampled = _too_large(model, memory_budget)
    backbone, sizes = _load(model, sampled)
    layers = [layer for stack in backbone.stacks for layer in stack]
    # Sizes of the checkpoint as loaded (the planner applies the job's weight bits to parameter counts);
    # timings as the job holds the backbone.
    element, param_bytes = sizes["element"], sizes["layers"]
    embedding_bytes, total = sizes["embeddings"], sizes["total"]
    quantize_backbone(backbone, quantization)
    pa = _parallel_model(backbone, reduction_factor, sampled is not None)
    blocks = [block for stack in pa.side.stacks for block in stack]
    forward, side_forward, side_backward, calls, timed = {}, {}, {}, {}, {}
    for batch_size in sorted(batch_sizes):
        runs = _time_runs(backbone, pa, layers, blocks, _batch(backbone, batch_size, seq_len), repeats)
        calls[batch_size] = _median(runs, 3)[0] / 3  # three calls: backbone, side network, backward
        forward[batch_size], side_forward[batch_size], side_backward[batch_size] = (
            _median(runs, 0), _median(runs, 1), _median(runs, 2))
        timed[batch_size] = sum(forward[batch_size])  # the layers timed (a sampled model's few)
        if sampled:
            forward[batch_size] = _spread(forward[batch_size], backbone.stacks, sampled)
    middle = sorted(batch_sizes)[len(batch_sizes) // 2]
    spec = pa.side.spec
    hidden_bytes = seq_len * spec.hidden_size * backbone.dtype.itemsize
    # Side activations kept for backward per block: roughly the inputs of its linear layers,
    # attention probabilities and the MLP's inner width, in fp32.
    side_act = 4 * seq_len * (8 * spec.width + 2 * spec.mlp_inner + spec.heads * seq_len)
    side_by_layer = iter(_nbytes(block) for block in blocks)
    taps = {(s, i) for s, stack in enumerate(spec.taps) for i in stack}
    side_param_bytes = [next(side_by_layer) if (s, i + 1) in taps else 0
                        for s, stack in enumerate(backbone.stacks) for i in range(len(stack))]
    return ModelMeasurement(
        model=model, family=backbone.family, hidden_size=spec.hidden_size, side_size=spec.width,
        seq_len=seq_len, batch_sizes=tuple(sorted(batch_sizes)), param_dtype_bytes=element,
        forward_s=forward, side_forward_s=side_forward, side_backward_s=side_backward,
        param_bytes=param_bytes, side_param_bytes=side_param_bytes,
        activation_bytes_per_sample=[float(side_act) if b else 0.0 for b in side_param_bytes],
        hidden_bytes_per_sample=float(hidden_bytes),
        embedding_param_bytes=embedding_bytes,
        head_param_bytes=max(0, total - embedding_bytes - sum(param_bytes)),
        side_extra_param_bytes=_nbytes(pa.side) - sum(side_param_bytes) + _nbytes(pa.head),
        transient_bytes_per_sample=float(4 * hidden_bytes
                                         + backbone.num_heads * seq_len * seq_len * backbone.dtype.itemsize),
        threads=torch.get_num_threads(), quantization=quantization,
        sampled_layers=sorted(sampled) if sampled else None,
        call_s=max(calls[min(calls)], 0.0), optimizer_s_per_param=_optimizer_s_per_param(pa),
        half_padded_forward_ratio=_half_padded_ratio(backbone, layers, _batch(backbone, middle, seq_len), repeats,
                                                     timed[middle]),
        **dict(zip(("cache_write_bytes_per_s", "cache_read_bytes_per_s"),
                   cache_speeds(len(layers) + 1, seq_len, spec.hidden_size), strict=True)),
    )


def cache_speeds(taps: int, seq_len: int, hidden: int, samples: int = 32, directory: str | None = None
                 ) -> tuple[float, float]:
    """(write, read) bytes per second of fp16 activation-cache records of `taps` hidden states of
    seq_len x hidden each, through pac.cache.ActivationCache in a scratch directory (`directory`: where;
    default the system's temporary directory; deleted after)."""
    import tempfile

    import numpy

    from pac.cache import ActivationCache
    from pac.cache.store import CacheKey

    generator = torch.Generator().manual_seed(0)
    record = [torch.randn(seq_len, hidden, generator=generator) for _ in range(taps)]
    nbytes = samples * taps * seq_len * hidden * 2
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        cache = ActivationCache(scratch, CacheKey("profile", ((0,),), "none", "profile"), "fp16")
        began = time.perf_counter()
        for i in range(samples):
            cache.put(f"s{i}", record)
        cache.flush()
        written = time.perf_counter() - began
        outs = [numpy.empty((seq_len, hidden), dtype=numpy.float32) for _ in range(taps)]  # as phase 2 reads
        began = time.perf_counter()
        for i in range(samples):
            cache.read_into(f"s{i}", outs)
        read = time.perf_counter() - began
        cache.close()
    return nbytes / max(written, 1e-9), nbytes / max(read, 1e-9)


def _time_runs(backbone, pa, layers, blocks, batch, repeats: int) -> list[tuple]:
    """`repeats` timed runs (after one to warm up) of the backbone's forward, the side network's and the
    backward: per run (layer forwards, side block forwards, side block backwards, [what the calls took
    beyond them])."""
    runs = []
    for _ in range(repeats + 1):
        backbone_timer, side_timer = _LayerTimer(layers), _LayerTimer(blocks, backward=True)
        began = time.perf_counter()
        out = backbone.run(batch)
        delta = pa.side(out.taps, model_masks(batch, backbone.family))
        pa.head(out.final + delta, batch).loss.backward()
        wall = time.perf_counter() - began
        backbone_timer.close()
        side_timer.close()
        runs.append((backbone_timer.forward, side_timer.forward, side_timer.backward,
                     [wall - sum(backbone_timer.forward) - sum(side_timer.forward) - sum(side_timer.backward)]))
        pa.zero_grad(set_to_none=True)
    return runs[1:]


def _half_padded_ratio(backbone, layers, batch: dict[str, torch.Tensor], repeats: int, full_s: float) -> float:
    """The layers' forward with the second half of each sample's positions padded (the median of `repeats`
    runs after a warm-up) against `full_s`, theirs on `batch` as it is; 1.0 where the layers compute
    padding too. Only the padded runs are extra: the profile timed the others already."""
    if not backbone.unpadded or batch["input_ids"].shape[1] < 2 or full_s <= 0:
        return 1.0
    half = dict(batch, attention_mask=batch["attention_mask"].clone())
    half["attention_mask"][:, batch["input_ids"].shape[1] // 2:] = 0
    times = []
    for run in range(repeats + 1):
        timer = _LayerTimer(layers)
        backbone.run(half)
        timer.close()
        if run:
            times.append(sum(timer.forward))
    return min(1.0, statistics.median(times) / full_s)


def _optimizer_s_per_param(model: torch.nn.Module, steps: int = 5) -> float:
    """Seconds of one AdamW step (and clearing the gradients) per trained parameter of `model`."""
    trained = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in trained)
    if not count:
        return 0.0
    from pac.train.loop import adamw

    optimizer = adamw(trained, 1e-9)  # as training makes it
    times = []
    for _ in range(steps + 1):
        for p in trained:
            p.grad = torch.zeros_like(p)
        began = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times[1:]) / count


def model_code_bytes(model: str) -> int:
    """This process's memory with `model`'s code loaded and the model built with no weights (parameters on
    meta): what running a job costs a device before the weights it holds."""
    import psutil

    from pac.models.imports import MODEL_CODE
    from pac.models.registry import resolve_model

    source = resolve_model(model)
    with MODEL_CODE:
        import transformers  # noqa: F401
        if not source.tiny:
            from pac.models.partial import skeleton

            built = skeleton(source)
            del built
    return psutil.Process().memory_info().rss


def _load(model: str, sampled: set[int] | None) -> tuple:
    """(backbone, its whole model's byte sizes): whole, or only the layers of `sampled` read."""
    sizes: dict = {}
    if sampled:
        from pac.models.partial import load_partial

        return load_partial(model, lambda whole: _keep_sample(whole, sizes)), sizes
    backbone = load_backbone(model)
    _sizes(backbone, sizes)
    return backbone, sizes


def _parallel_model(backbone, reduction_factor: int, sampled: bool):
    """The side network and head beside `backbone`, initialised by pruning; a sampled backbone lacks most
    layers to prune from, so its side network is timed from its random start (the same work)."""
    if not sampled:
        return build_model(backbone, TechniqueConfig("parallel", reduction_factor=reduction_factor), HeadConfig())
    from pac.side.network import SideConfig, SideNetwork, side_spec
    from pac.techniques.build import ParallelAdaptersModel

    head = Head(HeadConfig(), backbone.hidden_size, backbone.family).to(backbone.trainable_dtype)
    side = SideNetwork(side_spec(backbone, SideConfig(reduction_factor))).to(backbone.trainable_dtype)
    return ParallelAdaptersModel(backbone, side, head)


def _too_large(model: str, memory_budget: int | None) -> set[int] | None:
    """The layers to time (numbered across stacks) when `model`'s weights exceed half of `memory_budget`,
    else None (the whole model is timed). A tiny random model is always timed whole."""
    from pac.models.registry import resolve_model

    if not memory_budget or resolve_model(model).tiny:
        return None
    from pac.models.imports import MODEL_CODE
    from pac.models.partial import skeleton

    with MODEL_CODE:
        whole, _, _ = skeleton(resolve_model(model))
    if _nbytes(whole) <= memory_budget / 2:
        return None
    from pac.models.backbone import Backbone

    stacks = Backbone("", whole, None).stacks
    chosen, offset = set(), 0
    for stack in stacks:
        chosen |= set(range(offset, offset + min(SAMPLED_LAYERS, len(stack))))
        offset += len(stack)
    return chosen


def _sizes(backbone, sizes: dict) -> None:
    """Byte sizes of the whole model (its parameters may be on meta: sizes need no weights)."""
    sizes["element"] = next(backbone.model.parameters()).element_size()
    sizes["layers"] = [_nbytes(layer) for stack in backbone.stacks for layer in stack]
    sizes["embeddings"] = _nbytes(backbone.model.get_input_embeddings())
    sizes["total"] = _nbytes(backbone.model)


def _keep_sample(backbone, sizes: dict) -> None:
    """load_partial's release for a sampled profile: the first SAMPLED_LAYERS layers of every stack stay."""
    from pac.pipeline.backbone_stage import PassThrough, T5PassThrough

    _sizes(backbone, sizes)
    t5 = backbone.model_type == "t5"
    for stack in backbone.stacks:
        for index in range(min(SAMPLED_LAYERS, len(stack)), len(stack)):
            stack[index] = T5PassThrough() if t5 else PassThrough()


def _spread(times: list[float], stacks, sampled: set[int]) -> list[float]:
    """Per layer: the time measured, or for a layer not read the mean of its stack's measured layers."""
    out, offset = [], 0
    for stack in stacks:
        measured = [times[offset + i] for i in range(len(stack)) if offset + i in sampled]
        mean = sum(measured) / len(measured)
        out += [times[offset + i] if offset + i in sampled else mean for i in range(len(stack))]
        offset += len(stack)
    return out
