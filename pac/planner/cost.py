"""The cost model every planner, baseline and the simulator share: who computes how much of a micro-batch,
how long a stage, a boundary transfer and an AllReduce take, and (as matrices, for the DP) which layer
ranges a group of devices can hold.

Times come from the device profiles; the one rule added here is how a micro-batch of b samples is split
inside a group: sample by sample, each to the device that would finish its share of the whole model first
(so a twice-as-fast device gets about twice the samples). Numbers are cached per CostModel; it does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pac.limits import MAX_CHUNK_BYTES
from pac.planner.memory import MemoryUse, boundary_bytes_per_sample, hidden_bytes_per_sample, stage_memory
from pac.planner.profile import HomeProfile, interpolation_weights
from pac.planner.workload import TrainingJob

INF = math.inf
NO_LIMIT = 1 << 30  # "any number of micro-batches in flight fits"

# How pac.collective runs a ring AllReduce (bucket.DEFAULT_BUCKET_BYTES, group.MAX_SEGMENT_BYTES,
# schedule.MIN_SEGMENT_BYTES and SEGMENTS_PER_STEP; tests/unit/test_simulator.py keeps them equal). Copied,
# not imported: pac.collective imports torch and the planner does not.
RING_BUCKET_BYTES = 32 * 1024 * 1024
RING_MAX_SEGMENT_BYTES = MAX_CHUNK_BYTES
RING_MIN_SEGMENT_BYTES = 256 * 1024
RING_SEGMENTS_PER_STEP = 4


class CostModel:
    """Cached costs for one (home, job). Devices are referred to by their index in `home.devices`."""

    def __init__(self, home: HomeProfile, job: TrainingJob) -> None:
        self.home = home
        self.job = job
        self.model = home.model
        self.num_layers = home.model.num_layers
        self.num_devices = len(home.devices)
        self._times: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._tables: dict[tuple[int, str], np.ndarray] = {}
        self._model_times: dict[tuple[int, int], float] = {}
        self._spans: tuple[np.ndarray, ...] | None = None
        self._groups: dict[tuple[tuple[int, ...], int], tuple[np.ndarray, np.ndarray]] = {}
        self._shares: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}
        self._matrices: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._links: dict[tuple[int, int], tuple[float, float]] = {}
        self._rings: dict[tuple[int, ...], tuple[float, float]] = {}
        self._ring_step_s: float | None = None
        forward, backward = boundary_bytes_per_sample(self.model, job)
        self.forward_bytes_per_sample = forward
        self.backward_bytes_per_sample = backward

    # ---- per-device layer times -------------------------------------------------------------------
    def layer_times(self, device: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Forward and backward seconds of each layer on `device` at `batch` samples."""
        key = (device, batch)
        if key not in self._times:
            tokens = batch * self.job.token_fraction  # as samples of the profile's length (docs/planner.md)
            forward = self._interpolate(device, tokens, "forward_s")
            backward = self._interpolate(device, tokens, "backward_s")
            if self.job.real_share < 1:  # frozen layers skipping padding: their part (not the side's, half its
                scale = self.job.padding_scale(self.home.devices[device].half_padded_forward_ratio)  # backward)
                forward = forward - np.maximum(forward - backward / 2, 0.0) * (1.0 - scale)
            if self.top_first < self.num_layers:  # tuned top layers: a backward through them, about their forward
                backward = backward.copy()
                backward[self.top_first:] += forward[self.top_first:]
            self._times[key] = (forward, backward)
        return self._times[key]

    @property
    def top_first(self) -> int:
        """The first tuned top layer (num_layers without any): no stage boundary may fall after it."""
        return self.num_layers - min(self.job.top_layers, self.num_layers)

    def phase2_sample_s(self, device: int, share: int | None = None) -> float:
        """Phase 2's compute per sample on `device`: the side network, and the tuned top layers' forward and
        backward (from their cached input). `share`: the samples it trains a step; the side network's time
        per sample grows at small batches as its measured backward does (`side_scale`)."""
        side = self.home.devices[device].side_sample_s * self.job.token_fraction
        if share:
            side *= self.side_scale(device, share)
        if self.top_first == self.num_layers:
            return side
        batch = self.job.batch_size
        forward, backward = self.layer_times(device, batch)
        return side + float(forward[self.top_first:].sum() + backward[self.top_first:].sum()) / batch

    def side_scale(self, device: int, share: int) -> float:
        """The side network's time per sample at `share` samples against the profile's largest batch (where
        `side_sample_s` was taken), as its measured backward tables have it (at least 1)."""
        profile = self.home.devices[device]
        top = profile.batch_sizes[-1]
        tokens = share * self.job.token_fraction
        at_top = sum(row[-1] for row in profile.backward_s) / top
        here = float(self._interpolate(device, tokens, "backward_s").sum()) / max(tokens, 1e-9)
        return max(1.0, here / at_top) if at_top > 0 else 1.0

    def _interpolate(self, device: int, batch: int, table: str) -> np.ndarray:
        """`profile.interpolate` for every layer at once (all layers share the measured batch sizes)."""
        profile = self.home.devices[device]
        key = (device, table)
        if key not in self._tables:
            self._tables[key] = np.asarray(getattr(profile, table), dtype=float)
        ys = self._tables[key]
        i, weight, scale = interpolation_weights(profile.batch_sizes, batch)
        if scale is not None:
            return np.maximum(ys[:, 0] * scale, 0.0)
        value = ys[:, i] + weight * (ys[:, i + 1] - ys[:, i])
        if batch < profile.batch_sizes[0]:
            value = np.maximum(value, ys[:, 0] * batch / profile.batch_sizes[0])
        return np.maximum(value, 0.0)

    def model_time(self, device: int, batch: int) -> float:
        """Forward + backward of the whole model on `device` at `batch` samples."""
        key = (device, batch)
        if key not in self._model_times:
            forward, backward = self.layer_times(device, batch)
            self._model_times[key] = float(forward.sum() + backward.sum())
        return self._model_times[key]

    def shares(self, group: Sequence[int], batch: int) -> tuple[int, ...]:
        """Samples of a `batch`-sample micro-batch each device of `group` computes (sums to `batch`)."""
        key = (tuple(group), batch)
        if key not in self._shares:
            counts = [0] * len(group)
            for _ in range(batch):
                finish = [self.model_time(d, counts[i] + 1) for i, d in enumerate(group)]
                best = min(range(len(group)), key=lambda i: (finish[i], i))
                counts[best] += 1
            self._shares[key] = tuple(counts)
        return self._shares[key]

    # ---- one stage ---------------------------------------------------------------------------------
    def stage_times(self, group: Sequence[int], batch: int, start: int, stop: int) -> tuple[float, float]:
        """(forward, backward) seconds of one micro-batch on the stage: its slowest device decides. Each is
        one call, which costs the device's `call_s` beside its layers."""
        forward_max, backward_max = 0.0, 0.0
        for device, share in zip(group, self.shares(group, batch), strict=True):
            forward, backward = self.layer_times(device, share)
            call = self.home.devices[device].call_s
            forward_max = max(forward_max, float(forward[start:stop].sum()) + call)
            backward_max = max(backward_max, float(backward[start:stop].sum()) + call)
        return forward_max, backward_max

    def optimizer_s(self, group: Sequence[int], start: int, stop: int) -> float:
        """The optimiser step of a stage's trained parameters (side blocks and their share of the rest),
        on its slowest device: what the optimiser step before the next RunStep takes."""
        from pac.planner.memory import side_extra_share

        params = sum(self.model.side_layer_params[start:stop]) + side_extra_share(self.model, start, stop)
        return params * max(self.home.devices[d].optimizer_s_per_param for d in group)

    def stage_parts(self, group: Sequence[int], batch: int, start: int, stop: int) -> tuple[float, float, float]:
        """(frozen forward, trainable forward, backward) seconds of one micro-batch on the stage, its slowest
        device deciding each: what a stage running ahead splits its forward into. The trainable forward is
        the tuned top layers' whole forward and the side blocks' (taken as half their measured backward:
        a backward computes the gradients of both inputs and weights, two forwards' worth); the rest of
        a layer's forward is the frozen backbone's, which depends on the mini-batch alone."""
        frozen_max = trainable_max = backward_max = 0.0
        top = self.top_first
        for device, share in zip(group, self.shares(group, batch), strict=True):
            forward, backward = self.layer_times(device, share)
            low, call = min(stop, top), self.home.devices[device].call_s  # a call each: A, F and B
            side = 0.5 * float(backward[start:low].sum()) if low > start else 0.0
            tuned = float(forward[max(start, top):stop].sum()) if stop > top else 0.0
            trainable = min(side + tuned, float(forward[start:stop].sum()))
            frozen_max = max(frozen_max, float(forward[start:stop].sum()) - trainable + call)
            trainable_max = max(trainable_max, trainable + call)
            backward_max = max(backward_max, float(backward[start:stop].sum()) + call)
        return frozen_max, trainable_max, backward_max

    def stage_cost(self, group: Sequence[int], batch: int, start: int, stop: int, in_flight: int) -> float:
        """Eq. 3: max over the group of forward + backward of layers [start, stop); +inf if any device runs
        out of memory (or of disk for its phase-1 cache)."""
        worst = 0.0
        for device, share in zip(group, self.shares(group, batch), strict=True):
            use = self.stage_memory(device, share, start, stop, in_flight)
            profile = self.home.devices[device]
            if use.total > profile.memory_budget_bytes:
                return INF
            if self.phase1_disk_bytes(share, batch, start, stop) > profile.disk_budget_bytes:
                return INF
            forward, backward = self.layer_times(device, share)
            worst = max(worst, float(forward[start:stop].sum() + backward[start:stop].sum()))
        return worst

    def stage_memory(self, device: int, share: int, start: int, stop: int, in_flight: int) -> MemoryUse:
        return stage_memory(self.model, self.home.devices[device], self.job, start, stop, share, in_flight)

    # ---- links -------------------------------------------------------------------------------------
    def link(self, a: int, b: int) -> tuple[float, float]:
        """(bandwidth bytes/s, latency s) between devices a and b."""
        key = (min(a, b), max(a, b))
        if key not in self._links:
            link = self.home.link(self.home.devices[a].name, self.home.devices[b].name)
            self._links[key] = (link.bandwidth_bytes_per_s, link.latency_s)
        return self._links[key]

    def transfer(self, a: int, b: int, nbytes: float) -> float:
        if nbytes <= 0 or a == b:
            return 0.0
        bandwidth, latency = self.link(a, b)
        return latency + nbytes / bandwidth

    def boundary_pairs(self, sender: Sequence[int], receiver: Sequence[int], batch: int
                       ) -> list[tuple[int, int, int]]:
        """(sender device, receiver device, samples) for one micro-batch crossing a stage boundary.

        Both groups hold the micro-batch's samples as contiguous ranges in group order; each sender
        ships each receiver the samples their ranges share.
        """
        out = []
        send_ranges = _ranges(self.shares(sender, batch))
        recv_ranges = _ranges(self.shares(receiver, batch))
        for (s_lo, s_hi), a in zip(send_ranges, sender, strict=True):
            for (r_lo, r_hi), b in zip(recv_ranges, receiver, strict=True):
                overlap = min(s_hi, r_hi) - max(s_lo, r_lo)
                if overlap > 0:
                    out.append((a, b, overlap))
        return out

    def boundary_times(self, sender: Sequence[int], receiver: Sequence[int], batch: int) -> tuple[float, float]:
        """(forward, backward) seconds to move one micro-batch across a boundary; pairs move in parallel."""
        forward, backward = 0.0, 0.0
        for a, b, samples in self.boundary_pairs(sender, receiver, batch):
            forward = max(forward, self.transfer(a, b, samples * self.forward_bytes_per_sample))
            backward = max(backward, self.transfer(b, a, samples * self.backward_bytes_per_sample))
        return forward, backward

    def boundary_parts(self, sender: Sequence[int], receiver: Sequence[int], batch: int
                       ) -> tuple[float, float, float]:
        """(hidden states forward, side states forward, side gradients back) seconds across a boundary of a
        stage running ahead: its frozen layers' hidden states travel on their own, ahead of the side
        network's states."""
        hidden_bytes = self.model.seq_len * self.model.hidden_size * self.job.wire_bytes
        side_bytes = max(self.forward_bytes_per_sample - hidden_bytes, 0.0)
        hidden = side = backward = 0.0
        for a, b, samples in self.boundary_pairs(sender, receiver, batch):
            hidden = max(hidden, self.transfer(a, b, samples * hidden_bytes))
            side = max(side, self.transfer(a, b, samples * side_bytes))
            backward = max(backward, self.transfer(b, a, samples * self.backward_bytes_per_sample))
        return hidden, side, backward

    def ring_link(self, group: Sequence[int]) -> tuple[float, float]:
        """(bandwidth, latency) that paces a ring over `group` in its order: the slowest link's bandwidth and
        the largest latency (every rank waits for its previous one, so the slowest hop sets the pace)."""
        key = tuple(group)
        if key not in self._rings:
            n = len(key)
            ring = [self.link(key[i], key[(i + 1) % n]) for i in range(n)]
            self._rings[key] = (min(b for b, _ in ring), max(lat for _, lat in ring))
        return self._rings[key]

    def allreduce(self, group: Sequence[int], nbytes: float) -> float:
        """Seconds of `pac.collective.allreduce_` of `nbytes` of gradients in `group` (its ring order).

        What the runtime does: the tensors are packed into buckets of RING_BUCKET_BYTES, reduced one after
        the other; each bucket is a ring of 2(n-1) steps over n chunks of C = bucket / n bytes, and a chunk
        travels as segments (a quarter of it, at least RING_MIN_SEGMENT_BYTES, at most
        RING_MAX_SEGMENT_BYTES) that a rank forwards as soon as it has reduced or received them. Each rank's
        link sends its 2(n-1) chunks back to back unless a step's first segment is still on its way, so a
        bucket takes

            2(n-1) * C / bw + lat + (2(n-1) - 1) * max(0, lat + g / bw - C / bw)

        (g: the segment; bandwidth-bound, the usual 2(n-1)/n * bucket / bw plus one latency; latency-bound,
        every step waits for its first segment). The operation ends when the next rank acknowledges the
        last data: one latency more. bw and lat are those of the ring's slowest link (`ring_link`). Each
        step also costs the ring's own `ring_step_s`, measured.
        """
        n = len(group)
        if n <= 1 or nbytes <= 0:
            return 0.0
        return self._ring(group, nbytes) + 2 * (n - 1) * math.ceil(nbytes / RING_BUCKET_BYTES) * self.ring_step_s

    @property
    def ring_step_s(self) -> float:
        """The ring's own time per step beyond its links (framing, encryption, the runtime's bookkeeping):
        what the home's AllReduce probe took beyond `_ring`'s model of it, per step (0: not measured)."""
        if self._ring_step_s is None:
            self._ring_step_s = 0.0
            probe = self.home.allreduce_probe
            index = {d.name: i for i, d in enumerate(self.home.devices)}
            if probe is not None and len(probe[0]) > 1 and all(m in index for m in probe[0]):
                members = [index[m] for m in probe[0]]
                steps = 2 * (len(members) - 1) * math.ceil(probe[1] / RING_BUCKET_BYTES)
                self._ring_step_s = max(0.0, (probe[2] - self._ring(members, probe[1])) / steps)
        return self._ring_step_s

    def _ring(self, group: Sequence[int], nbytes: float) -> float:
        """`allreduce` from the links alone."""
        n = len(group)
        bandwidth, latency = self.ring_link(group)
        full, rest = divmod(float(nbytes), RING_BUCKET_BYTES)
        steps = 2 * (n - 1)
        total = latency  # the acknowledgement of the last data
        for bucket, count in ((RING_BUCKET_BYTES, full), (rest, 1.0 if rest > 0 else 0.0)):
            if count:
                chunk = bucket / n
                segment = min(chunk, RING_MAX_SEGMENT_BYTES,
                              max(RING_MIN_SEGMENT_BYTES, chunk / RING_SEGMENTS_PER_STEP))
                wait = max(0.0, latency + segment / bandwidth - chunk / bandwidth)
                total += count * (steps * chunk / bandwidth + latency + (steps - 1) * wait)
        return total

    def stage_gradient_bytes(self, start: int, stop: int) -> float:
        from pac.planner.memory import side_extra_share

        params = sum(self.model.side_layer_params[start:stop]) + side_extra_share(self.model, start, stop)
        return params * self.job.gradient_bytes_per_param

    # ---- matrices for the dynamic programme -------------------------------------------------------
    def phase1_cached_samples(self, share: int, batch: int) -> int:
        """Samples of the epoch a device computes (and caches) taking `share` of each `batch`-sample micro-batch."""
        return -(-self.job.samples * share // batch)

    def phase1_disk_bytes(self, share: int, batch: int, start: int, stop: int) -> float:
        """Cache a device writes in phase 1 for layers [start, stop) (the first stage also keeps h_0)."""
        layers = stop - start + (1 if start == 0 else 0)
        return self.phase1_cached_samples(share, batch) * layers * hidden_bytes_per_sample(self.model,
                                                                                           self.job.cache_bytes)

    def device_matrices(self, device: int, share: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """For layers [x, y): seconds (inf where y <= x) and the most micro-batches in flight that fit."""
        key = (device, share, batch)
        if key in self._matrices:
            return self._matrices[key]
        model, job, profile = self.model, self.job, self.home.devices[device]
        params, side, layers, kept, upper = self._layer_spans()
        forward, backward = self.layer_times(device, share)
        prefix = np.concatenate([[0.0], np.cumsum(forward + backward)])
        time = np.where(upper, prefix[None, :] - prefix[:, None], INF)
        forward_b, backward_b = boundary_bytes_per_sample(model, job)
        static = (params * job.weight_bytes_per_param + side * job.side_state_bytes_per_param
                  + share * model.transient_bytes_per_sample
                  + share * (2 * forward_b + 2 * backward_b + layers * hidden_bytes_per_sample(model, job.cache_bytes))
                  + profile.runtime_overhead_bytes)
        per_flight = share * kept
        room = profile.memory_budget_bytes - static
        # The device caches its share of every sample's hidden states of these layers on its disk.
        disk = self.phase1_cached_samples(share, batch) * layers * hidden_bytes_per_sample(model, job.cache_bytes)
        room = np.where(disk <= profile.disk_budget_bytes, room, -1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            flights = np.where(per_flight > 0, np.floor(room / np.where(per_flight > 0, per_flight, 1.0)),
                               np.where(room >= 0, NO_LIMIT, -1))
        flights = np.where(room >= 0, np.minimum(flights, NO_LIMIT), -1)
        self._matrices[key] = (time, flights)
        return time, flights

    def _layer_spans(self) -> tuple[np.ndarray, ...]:
        """Per layer range [x, y): backbone params (+ embeddings/head), side params, cached layers,
        kept activation bytes per sample, and the mask y > x. Independent of device and share."""
        if self._spans is None:
            model, n = self.model, self.num_layers

            def span(values: Sequence[float]) -> np.ndarray:
                p = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])
                return p[None, :] - p[:, None]

            first = np.zeros((n + 1, 1))
            first[0, 0] = 1.0
            last = np.zeros((1, n + 1))
            last[0, n] = 1.0
            params = span(model.layer_params) + model.embedding_params * first + model.head_params * last
            side = span(model.side_layer_params) + model.side_extra_params / 2 * (first + last)
            layers = span([1.0] * n) + first
            upper = np.triu(np.ones((n + 1, n + 1), dtype=bool), k=1)
            self._spans = (params, side, layers, span(model.activation_bytes_per_sample), upper)
        return self._spans

    def group_matrices(self, group: Sequence[int], batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Eq. 3 as a matrix over (first layer, end layer): the group's time and micro-batches that fit."""
        key = (tuple(group), batch)
        if key in self._groups:
            return self._groups[key]
        time, flights = None, None
        for device, share in zip(group, self.shares(group, batch), strict=True):
            t, f = self.device_matrices(device, share, batch)
            time = t if time is None else np.maximum(time, t)
            flights = f if flights is None else np.minimum(flights, f)
        assert time is not None and flights is not None
        if self.top_first + 1 < self.num_layers:  # the tuned top layers stay in the last stage: no cut among them
            time = time.copy()
            time[:, self.top_first + 1:self.num_layers] = INF
        self._groups[key] = (time, flights)
        return time, flights


def _ranges(shares: Sequence[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for share in shares:
        out.append((start, start + share))
        start += share
    return out
