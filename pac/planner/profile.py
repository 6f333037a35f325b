"""Typed planner input: what was measured about the model, the devices and the links between them.

A profile set is one JSON document (see docs/planner.md):

    {"version": 1,
     "model":   {...ModelProfile fields...},
     "devices": [{...DeviceProfile fields...}, ...],
     "links":   [{"a": NAME, "b": NAME, "bandwidth_bytes_per_s": X, "latency_s": Y}, ...],
     "default_link": {"bandwidth_bytes_per_s": X, "latency_s": Y},      # optional
     "allreduce_probe": {"members": [NAME, ...], "bytes": X, "seconds": Y}}  # optional

Times are seconds, sizes bytes, bandwidths bytes per second. Per-layer times are measured at a few batch
sizes and interpolated linearly in between (and extrapolated along the nearest measured segment).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pac.planner.errors import ProfileError

PROFILE_FORMAT_VERSION = 1


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ProfileError(f"{where}: {message}")


def _finite_nonnegative(value: float, where: str) -> None:
    _require(isinstance(value, int | float) and math.isfinite(value) and value >= 0, where,
             f"must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class ModelProfile:
    """The model being fine-tuned: the frozen backbone and its Parallel Adapters side network."""

    name: str
    hidden_size: int  # d: width of the backbone's hidden states h_i
    side_size: int  # r = d / k: width of the side network's states a_i
    seq_len: int  # tokens per sample
    layer_params: tuple[int, ...]  # backbone parameters of each transformer layer (frozen)
    side_layer_params: tuple[int, ...]  # trainable side-block parameters beside each layer
    activation_bytes_per_sample: tuple[float, ...]  # side activations kept for backward, per layer and sample
    embedding_params: int = 0  # backbone embeddings, held by the first stage
    head_params: int = 0  # final norm + LM/classification head, held by the last stage
    side_extra_params: int = 0  # Down_0, Up and the side head: split between first and last stage
    transient_bytes_per_sample: float = 0.0  # peak scratch of one backbone layer's forward, per sample
    # "pac": stages send (h, a) forward and the gradient of a back. "lora": the baselines' LoRA pipeline
    # (like Eco-FL), whose stages send h forward and its gradient back (side_* then describe LoRA's factors)
    technique: str = "pac"

    def __post_init__(self) -> None:
        where = f"model {self.name!r}"
        _require(bool(self.name), "model", "name must not be empty")
        for key in ("hidden_size", "side_size", "seq_len"):
            _require(int(getattr(self, key)) >= 1, f"{where}.{key}", "must be >= 1")
        _require(len(self.layer_params) >= 1, f"{where}.layer_params", "needs at least one layer")
        for key in ("side_layer_params", "activation_bytes_per_sample"):
            _require(len(getattr(self, key)) == len(self.layer_params), f"{where}.{key}",
                     f"has {len(getattr(self, key))} entries but layer_params has {len(self.layer_params)}")
        for key in ("layer_params", "side_layer_params", "activation_bytes_per_sample"):
            for i, value in enumerate(getattr(self, key)):
                _finite_nonnegative(value, f"{where}.{key}[{i}]")
        for key in ("embedding_params", "head_params", "side_extra_params", "transient_bytes_per_sample"):
            _finite_nonnegative(getattr(self, key), f"{where}.{key}")

    @property
    def num_layers(self) -> int:
        return len(self.layer_params)

    @property
    def side_params(self) -> int:
        """All trainable parameters."""
        return int(sum(self.side_layer_params)) + int(self.side_extra_params)


@dataclass(frozen=True)
class DeviceProfile:
    """One device of the home, as `pacctl profile` measured it."""

    name: str
    memory_budget_bytes: int  # what the job may use (RAM or accelerator memory), after the OS and other apps
    disk_budget_bytes: int  # room for the activation cache
    batch_sizes: tuple[int, ...]  # batch sizes at which layer times were measured, strictly increasing
    forward_s: tuple[tuple[float, ...], ...]  # [layer][i]: backbone + side forward of layer at batch_sizes[i]
    backward_s: tuple[tuple[float, ...], ...]  # [layer][i]: side-block backward at batch_sizes[i]
    side_sample_s: float  # phase 2: seconds per sample for the whole side network, forward + backward
    runtime_overhead_bytes: int = 0  # interpreter, framework and allocator overhead
    cache_read_bytes_per_s: float = math.inf  # disk read speed for the activation cache in phase 2
    # Devices that run on one machine share its processors: `host` names the machine ("" = a machine of
    # its own), `host_cores` its cores and `threads` the compute threads this device uses (0: unknown).
    # Its timings were measured with the machine to itself; phase 2 slows co-located devices that
    # together ask for more threads than the machine has (`host_contention`).
    host: str = ""
    host_cores: int = 0
    threads: int = 0
    call_s: float = 0.0  # one forward or backward call's own time beside its layers' (0: not measured)
    optimizer_s_per_param: float = 0.0  # an AdamW step, per trained parameter (0: not measured)
    round_trip_s: float = 0.0  # an empty call from the controller, sent to every device at once (0: not measured)
    half_padded_forward_ratio: float = 1.0  # its frozen layers' forward, half of each sample padded, against none

    def __post_init__(self) -> None:
        where = f"device {self.name!r}"
        _require(bool(self.name), "device", "name must not be empty")
        _require(self.memory_budget_bytes > 0, f"{where}.memory_budget_bytes", "must be > 0")
        for key in ("disk_budget_bytes", "runtime_overhead_bytes", "call_s", "optimizer_s_per_param", "round_trip_s",
                    "host_cores", "threads"):
            _finite_nonnegative(getattr(self, key), f"{where}.{key}")
        _require(self.side_sample_s > 0 and math.isfinite(self.side_sample_s), f"{where}.side_sample_s",
                 "must be a finite number > 0")
        _require(self.cache_read_bytes_per_s > 0, f"{where}.cache_read_bytes_per_s", "must be > 0")
        _require(0 < self.half_padded_forward_ratio <= 1, f"{where}.half_padded_forward_ratio", "must be in (0, 1]")
        _require(len(self.batch_sizes) >= 1, f"{where}.batch_sizes", "needs at least one batch size")
        _require(all(b >= 1 for b in self.batch_sizes), f"{where}.batch_sizes", "must all be >= 1")
        _require(all(a < b for a, b in zip(self.batch_sizes, self.batch_sizes[1:], strict=False)),
                 f"{where}.batch_sizes", "must be strictly increasing")
        for key in ("forward_s", "backward_s"):
            table = getattr(self, key)
            _require(len(table) >= 1, f"{where}.{key}", "needs one row per layer")
            for layer, row in enumerate(table):
                _require(len(row) == len(self.batch_sizes), f"{where}.{key}[{layer}]",
                         f"has {len(row)} times but there are {len(self.batch_sizes)} batch sizes")
                for i, value in enumerate(row):
                    _finite_nonnegative(value, f"{where}.{key}[{layer}][{i}]")
        _require(len(self.forward_s) == len(self.backward_s), f"{where}.backward_s",
                 f"has {len(self.backward_s)} layers but forward_s has {len(self.forward_s)}")

    @property
    def num_layers(self) -> int:
        return len(self.forward_s)

    def layer_times(self, batch: float) -> tuple[list[float], list[float]]:
        """Forward and backward time of every layer at `batch` samples (0 samples take no time)."""
        forward = [interpolate(self.batch_sizes, row, batch) for row in self.forward_s]
        backward = [interpolate(self.batch_sizes, row, batch) for row in self.backward_s]
        return forward, backward

    @property
    def speed(self) -> float:
        """Samples per second through the whole model at the largest measured batch (for ordering)."""
        top = len(self.batch_sizes) - 1
        total = sum(f[top] + b[top] for f, b in zip(self.forward_s, self.backward_s, strict=True))
        return self.batch_sizes[top] / total if total > 0 else math.inf


def interpolate(xs: Sequence[int], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear time at batch `x`; outside the measured range follow the nearest segment.

    With one measurement, time scales in proportion to the batch. Never negative; 0 at batch 0.
    """
    i, weight, scale = interpolation_weights(xs, x)
    if scale is not None:
        return max(ys[0] * scale, 0.0)
    value = ys[i] + weight * (ys[i + 1] - ys[i])
    if x < xs[0]:  # below the smallest measurement keep at least the proportional share
        value = max(value, ys[0] * x / xs[0])
    return max(value, 0.0)


def interpolation_weights(xs: Sequence[int], x: float) -> tuple[int, float, float | None]:
    """(segment i, weight along it, None) or (0, 0, proportional scale) for `interpolate`."""
    if x <= 0:
        return 0, 0.0, 0.0
    if len(xs) == 1:
        return 0, 0.0, x / xs[0]
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        i = next(j for j in range(len(xs) - 1) if xs[j] <= x <= xs[j + 1])
    return i, (x - xs[i]) / (xs[i + 1] - xs[i]), None


@dataclass(frozen=True)
class LinkProfile:
    """The measured link between two devices (symmetric)."""

    a: str
    b: str
    bandwidth_bytes_per_s: float
    latency_s: float

    def __post_init__(self) -> None:
        where = f"link {self.a!r}-{self.b!r}"
        _require(self.a != self.b, where, "a link joins two different devices")
        _require(self.bandwidth_bytes_per_s > 0, f"{where}.bandwidth_bytes_per_s", "must be > 0")
        _finite_nonnegative(self.latency_s, f"{where}.latency_s")


@dataclass(frozen=True)
class HomeProfile:
    """Everything the planner needs to know about the hardware: the model, devices and links."""

    model: ModelProfile
    devices: tuple[DeviceProfile, ...]
    links: tuple[LinkProfile, ...] = ()
    default_link: LinkProfile | None = None  # used for any pair without its own measured link
    # A ring AllReduce timed among devices: (their names in ring order, bytes, seconds); None: not measured.
    # The planner takes the ring's own time per step from it (CostModel.ring_step_s).
    allreduce_probe: tuple[tuple[str, ...], float, float] | None = None
    _link_index: dict[tuple[str, str], LinkProfile] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _require(len(self.devices) >= 1, "devices", "needs at least one device")
        names = [d.name for d in self.devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        _require(not duplicates, "devices", f"duplicate device names {duplicates}")
        for device in self.devices:
            _require(device.num_layers == self.model.num_layers, f"device {device.name!r}",
                     f"profiles {device.num_layers} layers but model {self.model.name!r} has "
                     f"{self.model.num_layers}")
        index: dict[tuple[str, str], LinkProfile] = {}
        known = set(names)
        for link in self.links:
            for end in (link.a, link.b):
                _require(end in known, f"link {link.a!r}-{link.b!r}", f"names unknown device {end!r}")
            key = (min(link.a, link.b), max(link.a, link.b))
            _require(key not in index, f"link {link.a!r}-{link.b!r}", "is given twice")
            index[key] = link
        if self.default_link is None:
            missing = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
                       if (min(a, b), max(a, b)) not in index]
            _require(not missing, "links", f"no link for {len(missing)} device pairs, e.g. {missing[:1]}; "
                     "measure them or give a default_link")
        self._link_index.update(index)

    def link(self, a: str, b: str) -> LinkProfile:
        """The link between devices `a` and `b` (a == b: an infinitely fast local copy)."""
        if a == b:
            return LinkProfile(a, a + "#", math.inf, 0.0)
        found = self._link_index.get((min(a, b), max(a, b)))
        if found is not None:
            return found
        assert self.default_link is not None
        return LinkProfile(a, b, self.default_link.bandwidth_bytes_per_s, self.default_link.latency_s)

    def device(self, name: str) -> DeviceProfile:
        for device in self.devices:
            if device.name == name:
                return device
        raise ProfileError(f"no device named {name!r}; known: {[d.name for d in self.devices]}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": PROFILE_FORMAT_VERSION,
            "model": asdict(self.model),
            "devices": [_device_to_dict(d) for d in self.devices],
            "links": [asdict(link) for link in self.links],
        }
        if self.default_link is not None:
            out["default_link"] = {"bandwidth_bytes_per_s": self.default_link.bandwidth_bytes_per_s,
                                   "latency_s": self.default_link.latency_s}
        if self.allreduce_probe is not None:
            out["allreduce_probe"] = dict(zip(("members", "bytes", "seconds"), self.allreduce_probe, strict=True))
        return out


def _device_to_dict(device: DeviceProfile) -> dict[str, Any]:
    out = asdict(device)
    drop = ["cache_read_bytes_per_s"] if math.isinf(device.cache_read_bytes_per_s) else []
    drop += [] if device.host else ["host", "host_cores", "threads"]
    return {k: v for k, v in out.items() if k not in drop}


def host_contention(devices: Sequence[DeviceProfile], active: Sequence[int]) -> dict[int, float]:
    """How much slower each active device computes than measured, because devices of one machine share its
    cores: the active devices' threads over the machine's cores, at least 1 (devices without a host, or
    whose cores or threads are unknown, are never slowed)."""
    wanted: dict[str, int] = {}
    for i in active:
        d = devices[i]
        if d.host and d.host_cores and d.threads:
            wanted[d.host] = wanted.get(d.host, 0) + d.threads
    out = {}
    for i in active:
        d = devices[i]
        out[i] = max(1.0, wanted[d.host] / d.host_cores) if d.host in wanted and d.host_cores and d.threads else 1.0
    return out


def _fields(data: Any, where: str, required: Sequence[str], optional: Sequence[str]) -> dict[str, Any]:
    _require(isinstance(data, Mapping), where, f"must be a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    _require(not missing, where, f"missing field(s) {missing}")
    unknown = sorted(set(data) - set(required) - set(optional))
    _require(not unknown, where, f"unknown field(s) {unknown}")
    return dict(data)


def _tuple(value: Any, where: str) -> tuple:
    _require(isinstance(value, list | tuple), where, "must be a list")
    return tuple(value)


def _link_from_dict(data: Any, where: str, a: str | None = None, b: str | None = None) -> LinkProfile:
    if a is None:
        data = _fields(data, where, ["a", "b", "bandwidth_bytes_per_s", "latency_s"], [])
        a, b = str(data["a"]), str(data["b"])
    else:
        data = _fields(data, where, ["bandwidth_bytes_per_s", "latency_s"], [])
    assert b is not None
    return LinkProfile(a, b, float(data["bandwidth_bytes_per_s"]), float(data["latency_s"]))


def home_from_dict(data: Any) -> HomeProfile:
    """Build a HomeProfile from the profile JSON document (already parsed); errors name the bad field."""
    data = _fields(data, "profile", ["model", "devices"], ["version", "links", "default_link", "allreduce_probe"])
    version = data.get("version", PROFILE_FORMAT_VERSION)
    _require(version == PROFILE_FORMAT_VERSION, "profile.version",
             f"is {version!r}; this planner reads version {PROFILE_FORMAT_VERSION}")
    m = _fields(data["model"], "model",
                ["name", "hidden_size", "side_size", "seq_len", "layer_params", "side_layer_params",
                 "activation_bytes_per_sample"],
                ["embedding_params", "head_params", "side_extra_params", "transient_bytes_per_sample", "technique"])
    for key in ("layer_params", "side_layer_params", "activation_bytes_per_sample"):
        m[key] = _tuple(m[key], f"model.{key}")
    model = ModelProfile(**m)
    devices = []
    for i, raw in enumerate(_tuple(data["devices"], "devices")):
        d = _fields(raw, f"devices[{i}]",
                    ["name", "memory_budget_bytes", "disk_budget_bytes", "batch_sizes", "forward_s",
                     "backward_s", "side_sample_s"], ["runtime_overhead_bytes", "cache_read_bytes_per_s", "host",
                                                      "host_cores", "threads", "call_s", "optimizer_s_per_param",
                                                      "round_trip_s", "half_padded_forward_ratio"])
        d["batch_sizes"] = _tuple(d["batch_sizes"], f"devices[{i}].batch_sizes")
        for key in ("forward_s", "backward_s"):
            d[key] = tuple(_tuple(row, f"devices[{i}].{key}") for row in _tuple(d[key], f"devices[{i}].{key}"))
        devices.append(DeviceProfile(**d))
    links = tuple(_link_from_dict(raw, f"links[{i}]") for i, raw in enumerate(_tuple(data.get("links", []),
                                                                                       "links")))
    default = None
    if data.get("default_link") is not None:
        default = _link_from_dict(data["default_link"], "default_link", "*", "**")
    probe, raw = None, data.get("allreduce_probe")
    if raw is not None:
        raw = _fields(raw, "allreduce_probe", ["members", "bytes", "seconds"], [])
        probe = (tuple(map(str, _tuple(raw["members"], "allreduce_probe"))), float(raw["bytes"]), float(raw["seconds"]))
        _require(set(probe[0]) <= {d.name for d in devices} and math.isfinite(probe[2]), "allreduce_probe",
                 "names unknown devices or has no finite seconds")
    return HomeProfile(model=model, devices=tuple(devices), links=links, default_link=default, allreduce_probe=probe)


def load_home(path: str | Path) -> HomeProfile:
    """Read a profile JSON file (see docs/planner.md); errors name the file and the bad field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ProfileError(f"{path}: cannot read profile file ({error.strerror or error})") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ProfileError(f"{path}: not JSON (line {error.lineno}, column {error.colno}: {error.msg})") from error
    try:
        return home_from_dict(data)
    except (ProfileError, TypeError, ValueError) as error:
        raise ProfileError(f"{path}: {error}") from error


def shared_host_views(home: HomeProfile) -> list[HomeProfile]:
    """The home as phase 1 sees it when devices of one machine ask for more threads than it has cores.

    Layer timings were measured with the machine to itself. Two views are planned and the faster plan
    kept: every device, its phase-1 timings slowed by its machine's contention with all its devices
    working (`host_contention`); and each such machine with only as many devices as its cores run at
    full speed (its fastest ones; the others idle), timings as measured. Phase 2 weighs contention itself
    (`phase2`), so `side_sample_s` is never scaled here. Without such a machine: the home itself."""
    devices = home.devices
    slow = host_contention(devices, range(len(devices)))
    if all(factor == 1.0 for factor in slow.values()):
        return [home]

    def scaled(d: DeviceProfile, factor: float) -> DeviceProfile:
        return dataclasses.replace(d, forward_s=tuple(tuple(t * factor for t in row) for row in d.forward_s),
                                   backward_s=tuple(tuple(t * factor for t in row) for row in d.backward_s))

    everyone = dataclasses.replace(home, devices=tuple(scaled(d, slow[i]) for i, d in enumerate(devices)))
    keep, room = [], {}
    for i in sorted(range(len(devices)), key=lambda i: (-devices[i].speed, i)):
        d = devices[i]
        if slow[i] == 1.0:
            keep.append(i)
            continue
        left = room.setdefault(d.host, d.host_cores)
        if left >= d.threads or not any(devices[k].host == d.host for k in keep):
            keep.append(i)
            room[d.host] = left - d.threads
    names = {devices[i].name for i in keep}
    fewer = dataclasses.replace(home, devices=tuple(d for d in devices if d.name in names),
                                links=tuple(link for link in home.links if link.a in names and link.b in names))
    return [everyone, fewer]
