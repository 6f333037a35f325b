"""Synthetic homes for tests and the benchmark: paper-like devices (4 GB and 8 GB boards of unequal speed)
on 1 Gbit/s links, and a transformer-shaped model of any depth. Deterministic for a given seed.

A device's batch-1 layer time is modelled: the layer's FLOPs over the device's effective FLOP/s (batch 1
counted as 1.5 samples of work) plus a fixed per-call overhead; backward runs only the side block. How that
time grows with the batch is measured, not assumed: `BATCH_SCALING` is time(batch) / time(1) of real layers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pac.planner.profile import DeviceProfile, HomeProfile, LinkProfile, ModelProfile

GIB = 1 << 30
GBIT_PER_S = 125e6  # bytes per second
MEASURED_BATCHES = (1, 2, 4, 8, 16, 32)

# time(batch) / time(1) per layer, summed over the layers, at MEASURED_BATCHES: the medians of three runs of
# `pac.profiling.measure("minilm", batches, 128)` (seq 128, one torch thread, the shared x86 CPU of this
# project; two runs timed with the thread's CPU clock to keep other processes out). Run to run the ratios
# varied by about 15%. Real layers are close to linear: a sample costs ~0.9x its batch-1 time at batch 8.
BATCH_SCALING = {
    "backbone_forward": (1.0, 1.84, 3.57, 7.32, 16.1, 30.0),
    "side_forward": (1.0, 1.75, 2.98, 5.42, 9.78, 19.75),
    "side_backward": (1.0, 1.76, 3.22, 6.35, 11.2, 24.7),
}


# A LoRA layer (rank 8 on every linear layer; its backward takes the input gradients through the frozen
# weights and the factors' gradients) against the frozen forward PAC runs, at MEASURED_BATCHES, and the
# bytes autograd keeps per sample against Korthikanti et al.'s count: `python -m bench.lora_layers --model
# minilm` (seq 128, one torch thread; bench/results/lora-layers-minilm.json). Run to run the ratios vary by
# about 15% (the forward's 0.97 at batch 8 is noise: LoRA adds work). The planner benchmark's LoRA
# baselines (like Eco-FL and EDDL) are costed from these.
LORA_OVER_FROZEN = {
    "forward": (1.276, 1.11, 1.143, 0.971, 1.143, 0.973),
    "backward": (1.518, 1.329, 1.352, 1.242, 1.46, 1.298),
}
LORA_KEPT_OVER_KORTHIKANTI = 0.642
LORA_RANK = 8


@dataclass(frozen=True)
class DeviceKind:
    """A kind of edge device: its usable memory and its effective throughput."""

    name: str
    memory_budget_bytes: int
    tflops: float  # effective fp16 TFLOP/s on transformer layers
    overhead_s: float = 0.002  # fixed cost of one layer call


# Jetson-class boards as in the paper's testbed: memory after the OS, effective (not peak) throughput.
NANO = DeviceKind("nano-4g", int(2.8 * GIB), 0.12)
TX2 = DeviceKind("tx2-8g", int(6.5 * GIB), 0.20)
NX = DeviceKind("nx-8g", int(6.5 * GIB), 0.45)
PALETTE = (NANO, TX2, NX)


def transformer_model(num_layers: int, hidden: int = 1024, reduction: int = 8, seq_len: int = 128,
                      heads: int = 16, name: str | None = None) -> ModelProfile:
    """A BART/T5-Large-like stack of `num_layers` layers of width `hidden` with a side network of d/k."""
    side = hidden // reduction
    layer = 12 * hidden * hidden
    side_layer = 12 * side * side + hidden * side  # side block + its Down_i projection
    kept = 4 * seq_len * (20 * side) + 4 * (heads // 2) * seq_len * seq_len  # fp32 side activations
    transient = 2 * seq_len * 4 * hidden + 2 * heads * seq_len * seq_len
    return ModelProfile(
        name=name or f"synthetic-{num_layers}x{hidden}",
        hidden_size=hidden, side_size=side, seq_len=seq_len,
        layer_params=(layer,) * num_layers,
        side_layer_params=(side_layer,) * num_layers,
        activation_bytes_per_sample=(float(kept),) * num_layers,
        embedding_params=32000 * hidden, head_params=hidden * hidden,
        side_extra_params=2 * hidden * side,
        transient_bytes_per_sample=float(transient),
    )


def lora_model(model: ModelProfile, heads: int = 16) -> ModelProfile:
    """`model` tuned with LoRA instead (the baselines like Eco-FL and EDDL): rank-8 factors on each layer's
    six linear layers are what trains, and autograd keeps the layer's activations for the backward through
    the frozen weights: Korthikanti et al.'s per-layer count (34 s h + 5 a s^2 bytes per sample at 16 bits),
    doubled for fp32 and scaled by what a real layer keeps against it (LORA_KEPT_OVER_KORTHIKANTI)."""
    import dataclasses

    hidden, seq = model.hidden_size, model.seq_len
    lora = LORA_RANK * (4 * 2 * hidden + 2 * 5 * hidden)  # q, k, v, o (d -> d); up (d -> 4d), down (4d -> d)
    kept = LORA_KEPT_OVER_KORTHIKANTI * 2.0 * (34 * seq * hidden + 5 * heads * seq * seq)
    return dataclasses.replace(model, name=f"{model.name}-lora", side_size=1, technique="lora",
                               side_layer_params=(lora,) * model.num_layers,
                               activation_bytes_per_sample=(kept,) * model.num_layers, side_extra_params=0)


def device_for(model: ModelProfile, kind: DeviceKind, name: str, speed: float = 1.0,
               disk_budget_bytes: int = 32 * GIB) -> DeviceProfile:
    """Profile of one device of `kind` (times scaled by 1/speed) for `model` (a LoRA model: `lora_model`)."""
    if model.technique == "lora":
        return _lora_device(model, kind, name, speed, disk_budget_bytes)
    flops_per_sample = [2.0 * p * model.seq_len for p in model.layer_params]
    side_flops = [2.0 * p * model.seq_len for p in model.side_layer_params]
    rate = kind.tflops * 1e12 * speed
    forward, backward = [], []
    scale_f, scale_sf, scale_sb = (BATCH_SCALING[k] for k in ("backbone_forward", "side_forward", "side_backward"))
    for f, sf in zip(flops_per_sample, side_flops, strict=True):
        # Batch 1 uses the device less well (1.5 sample-equivalents of work); larger batches scale as measured.
        backbone_1, side_1 = kind.overhead_s + 1.5 * f / rate, 1.5 * sf / rate
        side_backward_1 = kind.overhead_s / 2 + 2 * 1.5 * sf / rate
        forward.append(tuple(backbone_1 * a + side_1 * b for a, b in zip(scale_f, scale_sf, strict=True)))
        backward.append(tuple(side_backward_1 * c for c in scale_sb))
    side_sample = sum(3 * sf for sf in side_flops) / rate + kind.overhead_s * model.num_layers / 8
    return DeviceProfile(
        name=name, memory_budget_bytes=kind.memory_budget_bytes, disk_budget_bytes=disk_budget_bytes,
        batch_sizes=MEASURED_BATCHES, forward_s=tuple(forward), backward_s=tuple(backward),
        side_sample_s=side_sample, runtime_overhead_bytes=300 << 20, cache_read_bytes_per_s=400e6,
    )


def _lora_device(model: ModelProfile, kind: DeviceKind, name: str, speed: float,
                 disk_budget_bytes: int) -> DeviceProfile:
    """A device running LoRA layers: each layer's frozen forward as PAC's device has it (`device_for`), times
    what LoRA's forward and backward measured against it (LORA_OVER_FROZEN)."""
    rate = kind.tflops * 1e12 * speed
    forward, backward = [], []
    for p in model.layer_params:
        one = kind.overhead_s + 1.5 * 2.0 * p * model.seq_len / rate
        frozen = [one * a for a in BATCH_SCALING["backbone_forward"]]
        forward.append(tuple(t * r for t, r in zip(frozen, LORA_OVER_FROZEN["forward"], strict=True)))
        backward.append(tuple(t * r for t, r in zip(frozen, LORA_OVER_FROZEN["backward"], strict=True)))
    return DeviceProfile(
        name=name, memory_budget_bytes=kind.memory_budget_bytes, disk_budget_bytes=disk_budget_bytes,
        batch_sizes=MEASURED_BATCHES, forward_s=tuple(forward), backward_s=tuple(backward),
        side_sample_s=1.0, runtime_overhead_bytes=300 << 20, cache_read_bytes_per_s=400e6,
    )


def synthetic_home(num_layers: int, num_devices: int, seed: int = 0, *, kinds: Sequence[DeviceKind] = PALETTE,
                   bandwidth_bytes_per_s: float = GBIT_PER_S, latency_s: float = 0.001,
                   hidden: int = 1024, technique: str = "pac") -> HomeProfile:
    """A heterogeneous home: each device a random kind with +-15% speed, all pairs on one kind of link.
    `technique` "lora": the same devices and speeds running LoRA (`lora_model`), for the baselines."""
    rng = random.Random(seed)
    model = transformer_model(num_layers, hidden=hidden)
    if technique == "lora":
        model = lora_model(model)
    devices = []
    for i in range(num_devices):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(list(kinds))
        speed = round(rng.uniform(0.85, 1.15), 2)
        devices.append(device_for(model, kind, f"{kind.name}-{i}", speed))
    return HomeProfile(model=model, devices=tuple(devices),
                       default_link=LinkProfile("*", "**", bandwidth_bytes_per_s, latency_s))


def tiny_home(layer_seconds: Sequence[Sequence[float]], memory_budget_bytes: Sequence[int] | None = None, *,
              backward_fraction: float = 0.5, bandwidth_bytes_per_s: float = 1e12, latency_s: float = 0.0,
              layer_params: int = 1000, activation_bytes: float = 100.0, side_sample_s: float = 0.01,
              disk_budget_bytes: int = 1 << 40) -> HomeProfile:
    """A small exact home for tests: device i runs layer l in layer_seconds[i][l] seconds per sample
    (forward; backward is `backward_fraction` of it), time exactly proportional to batch size."""
    num_layers = len(layer_seconds[0])
    model = ModelProfile(
        name="tiny", hidden_size=8, side_size=1, seq_len=1,
        layer_params=(layer_params,) * num_layers, side_layer_params=(10,) * num_layers,
        activation_bytes_per_sample=(activation_bytes,) * num_layers,
    )
    budgets = memory_budget_bytes or [1 << 40] * len(layer_seconds)
    devices = tuple(
        DeviceProfile(
            name=f"d{i}", memory_budget_bytes=int(budgets[i]), disk_budget_bytes=disk_budget_bytes,
            batch_sizes=(1,), forward_s=tuple((t,) for t in row),
            backward_s=tuple((t * backward_fraction,) for t in row), side_sample_s=side_sample_s,
        )
        for i, row in enumerate(layer_seconds)
    )
    return HomeProfile(model=model, devices=devices,
                       default_link=LinkProfile("*", "**", bandwidth_bytes_per_s, latency_s))
