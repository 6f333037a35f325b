"""pac.v1 daemon.proto <-> the product's own types: stored profiles and link measurements."""

from __future__ import annotations

import json
from typing import Any

from pac.v1 import daemon_pb2

_MEASUREMENT_LAYER_FIELDS = ("param_bytes", "activation_bytes_per_sample", "side_param_bytes")
_TIMING_FIELDS = ("forward_s", "side_forward_s", "side_backward_s")


def _per_batch(value: Any, batch_sizes: list[int]) -> dict[int, list[float]]:
    """Timings keyed by batch size, whether stored as {bs: [...]} (JSON keys are strings) or a list."""
    if isinstance(value, dict):
        return {int(k): list(v) for k, v in value.items()}
    return dict(zip(batch_sizes, (list(v) for v in value), strict=True))


def _as_list(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def profile_to_proto(stored: dict[str, Any]) -> daemon_pb2.ModelProfile:
    measurement = dict(stored["measurement"])
    sizes = list(stored["batch_sizes"])
    timings = {name: _per_batch(measurement.pop(name), sizes) for name in _TIMING_FIELDS}
    layers = {name: _as_list(measurement.pop(name, [])) for name in _MEASUREMENT_LAYER_FIELDS}
    return daemon_pb2.ModelProfile(
        node_id=stored["node_id"], model=stored["model"], seq_len=stored["seq_len"],
        reduction_factor=stored["reduction_factor"],
        timings=[daemon_pb2.BatchTimings(batch_size=bs, **{n: timings[n][bs] for n in _TIMING_FIELDS})
                 for bs in sorted(timings["forward_s"])],
        memory_budget_bytes=stored["memory_budget_bytes"], measured_at_unix=stored["measured_at_unix"],
        accelerator=stored["accelerator"], extra_json=json.dumps(measurement, sort_keys=True),
        quantization=stored.get("quantization", "none"), **layers)


def profile_from_proto(profile: daemon_pb2.ModelProfile) -> dict[str, Any]:
    """The stored-profile dict back (timings keyed by batch size as strings, as JSON keeps them)."""
    measurement: dict[str, Any] = json.loads(profile.extra_json or "{}")
    for name in _TIMING_FIELDS:
        measurement[name] = {str(t.batch_size): list(getattr(t, name)) for t in profile.timings}
    for name in _MEASUREMENT_LAYER_FIELDS:
        measurement[name] = list(getattr(profile, name))
    return {"node_id": profile.node_id, "model": profile.model, "seq_len": profile.seq_len,
            "reduction_factor": profile.reduction_factor, "quantization": profile.quantization or "none",
            "batch_sizes": [t.batch_size for t in profile.timings],
            "memory_budget_bytes": profile.memory_budget_bytes, "accelerator": profile.accelerator,
            "measured_at_unix": profile.measured_at_unix, "measurement": measurement}


def link_to_dict(link: daemon_pb2.LinkMeasurement) -> dict[str, Any]:
    return {"source": link.source_node_id, "target": link.target_node_id, "rtt_s": link.rtt_s,
            "bandwidth_bytes_per_s": link.bandwidth_bytes_per_s, "payload_bytes": link.payload_bytes,
            "rounds": link.rounds}


def link_to_proto(link: dict[str, Any]) -> daemon_pb2.LinkMeasurement:
    return daemon_pb2.LinkMeasurement(
        source_node_id=link["source"], target_node_id=link["target"], rtt_s=link["rtt_s"],
        bandwidth_bytes_per_s=link["bandwidth_bytes_per_s"], payload_bytes=link["payload_bytes"],
        rounds=link["rounds"])
