"""The memory model: what one device holds while it runs one stage (phase 1) or the side network (phase 2).

Phase 1, a device running layers [start, stop) of an L-layer model with `share` samples of each micro-batch,
while `in_flight` micro-batches have run forward but not yet backward (1F1B: min(stages from here to the
end, micro-batches)):

    weights      backbone layers at the job's quantisation (+ embeddings on the first stage, head on the last)
    side state   side-block parameters, gradients and optimiser state (side_state_bytes_per_param each)
    activations  in_flight * share * side activations kept for backward
    transient    share * one backbone layer's peak scratch (the backbone keeps nothing for backward)
    buffers      share * (h, a) in and out of the stage on the wire, and the cache write buffer for the
                 micro-batch's hidden states of these layers
    overhead     the device's measured runtime overhead

Phase 2 holds no backbone but the tuned top layers (float32): the whole side network, one micro-batch of
activations and its cache reads.

The controller holds no backbone either (`controller_memory`): the side network and head (its own and the
state gathered from the devices at a checkpoint), the tuned top layers and the final norm and LM head
(which score the evaluation data from its cached states), and one evaluation batch of cached states.
"""

from __future__ import annotations

from dataclasses import dataclass

from pac.planner.profile import DeviceProfile, ModelProfile
from pac.planner.workload import TrainingJob


@dataclass(frozen=True)
class MemoryUse:
    """Peak bytes one device needs, by kind."""

    weights: float
    side_state: float
    activations: float
    transient: float
    buffers: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.side_state + self.activations + self.transient + self.buffers + self.overhead


def hidden_bytes_per_sample(model: ModelProfile, dtype_bytes: int) -> float:
    """One hidden state h_i of one sample."""
    return float(model.seq_len * model.hidden_size * dtype_bytes)


def boundary_bytes_per_sample(model: ModelProfile, job: TrainingJob) -> tuple[float, float]:
    """Bytes per sample crossing a stage boundary: forward (h_y, a_y), backward grad of a_y only."""
    if model.technique == "lora":  # a LoRA pipeline: h forward, its gradient back
        return float(model.seq_len * model.hidden_size * job.wire_bytes), \
            float(model.seq_len * model.hidden_size * job.wire_bytes)
    forward = model.seq_len * (model.hidden_size + model.side_size) * job.wire_bytes
    backward = model.seq_len * model.side_size * job.wire_bytes
    return float(forward), float(backward)


# What autograd keeps per sample in a tuned (LoRA) layer, against Korthikanti et al.'s count of a layer's
# activations (34 s h + 5 a s^2 bytes at 16 bits; doubled for fp32): measured on a minilm layer,
# bench/results/lora-layers-minilm.json (pac.planner.synthetic.LORA_KEPT_OVER_KORTHIKANTI).
TUNED_KEPT_OVER_KORTHIKANTI = 0.64


def tuned_layer_kept_bytes_per_sample(model: ModelProfile) -> float:
    """Activations a tuned top layer keeps for its backward, per sample (heads taken as hidden / 64)."""
    seq, hidden = model.seq_len, model.hidden_size
    heads = max(1, hidden // 64)
    return TUNED_KEPT_OVER_KORTHIKANTI * 2.0 * (34 * seq * hidden + 5 * heads * seq * seq)


def run_ahead_bytes_per_sample(model: ModelProfile, job: TrainingJob, start: int, stop: int) -> float:
    """What a stage running ahead holds per sample between its frozen forward and its training forward
    (pac.worker.ahead): the hidden states its side blocks read (none without a side network) and, on the
    last stage, the final state or the tuned layers' input. In the backbone's compute precision."""
    dtype = 2 if job.weight_bits == 16 else 4
    tapped = sum(1 for i in range(start, min(stop, model.num_layers - job.top_layers)) if model.side_layer_params[i])
    if tapped and start == 0:
        tapped += 1  # h_0
    last = 1 if stop == model.num_layers else 0
    return hidden_bytes_per_sample(model, dtype) * (tapped + last)


def side_extra_share(model: ModelProfile, start: int, stop: int) -> float:
    """Down_0 lives with the first stage and Up/side head with the last: half of the extras each."""
    share = 0.0
    if start == 0:
        share += model.side_extra_params / 2
    if stop == model.num_layers:
        share += model.side_extra_params / 2
    return share


def stage_memory(model: ModelProfile, device: DeviceProfile, job: TrainingJob, start: int, stop: int,
                 share: int, in_flight: int) -> MemoryUse:
    """Peak memory of `device` running layers [start, stop) in phase 1 (see the module docstring)."""
    layers = range(start, stop)
    params = sum(model.layer_params[i] for i in layers)
    if start == 0:
        params += model.embedding_params
    if stop == model.num_layers:
        params += model.head_params
    side = sum(model.side_layer_params[i] for i in layers) + side_extra_share(model, start, stop)
    kept = sum(model.activation_bytes_per_sample[i] for i in layers)
    top = min(job.top_layers, model.num_layers) if model.technique == "pac" else 0
    if stop == model.num_layers and top:  # the tuned layers keep their activations for backward
        kept += top * tuned_layer_kept_bytes_per_sample(model)
    forward, backward = boundary_bytes_per_sample(model, job)
    cache = hidden_bytes_per_sample(model, job.cache_bytes) * (stop - start + (1 if start == 0 else 0))
    return MemoryUse(
        weights=params * job.weight_bytes_per_param,
        side_state=side * job.side_state_bytes_per_param,
        activations=in_flight * share * kept,
        transient=share * model.transient_bytes_per_sample,
        buffers=share * (2 * forward + 2 * backward + cache),
        overhead=float(device.runtime_overhead_bytes),
    )


def phase2_memory(model: ModelProfile, device: DeviceProfile, job: TrainingJob, share: int) -> MemoryUse:
    """Peak memory of `device` training the whole side network on `share` cached samples per step."""
    cache = hidden_bytes_per_sample(model, job.cache_bytes) * (model.num_layers + 1)
    top = min(job.top_layers, model.num_layers)
    return MemoryUse(
        weights=4.0 * sum(model.layer_params[model.num_layers - top:]) if top else 0.0,  # tuned layers: fp32
        side_state=model.side_params * job.side_state_bytes_per_param,
        activations=share * (sum(model.activation_bytes_per_sample) + top * tuned_layer_kept_bytes_per_sample(model)),
        transient=0.0,
        buffers=share * cache,
        overhead=float(device.runtime_overhead_bytes),
    )


def cache_bytes_per_sample(model: ModelProfile, job: TrainingJob) -> float:
    """Disk for one sample's cached hidden states h_0..h_L."""
    return hidden_bytes_per_sample(model, job.cache_bytes) * (model.num_layers + 1)


EVALUATION_BATCH = 64  # pac.train.loop.evaluate's batch: the controller scores this many cached samples at once


def controller_memory(model: ModelProfile, job: TrainingJob) -> MemoryUse:
    """Peak memory of the controller (`pacctl train`): what the module docstring lists. The tuned layers are
    float32 (they can only be tuned unquantised); the LM head is counted whether or not the task uses it."""
    top = min(job.top_layers, model.num_layers)
    tuned = sum(model.layer_params[model.num_layers - top:]) if top else 0
    return MemoryUse(
        weights=tuned * 4 + model.head_params * job.weight_bytes_per_param,
        # its model, a state gathered from the devices, the best epoch's; LoRA factors of rank 8 on the tuned
        # layers take about 2 * 8 / hidden_size of their weights
        side_state=3 * 4 * (model.side_params + tuned * 16 / model.hidden_size),
        activations=0.0,
        transient=EVALUATION_BATCH * model.transient_bytes_per_sample,
        buffers=EVALUATION_BATCH * hidden_bytes_per_sample(model, 4) * (model.num_layers + 1),
        overhead=float(job.controller_overhead_bytes),
    )
