"""Daemons' stored profiles + link probes -> the planner's profile document (docs/planner.md).

Pure: no I/O. The planner reads parameter counts; a measurement reports bytes, so counts are bytes
divided by the element size (`param_dtype_bytes` if the measurement gives it, else fp32).
"""

from __future__ import annotations

from typing import Any

from pac.planner.profile import PROFILE_FORMAT_VERSION, home_from_dict

FP32 = 4
# Of a daemon's memory budget the planner plans to all but this share: what the memory model does not count
# (allocator fragmentation, the tensor being read while a stage loads, gRPC buffers) stays within the budget.
MEMORY_RESERVE = 0.05


def _timings(measurement: dict[str, Any], name: str, batch_sizes: list[int]) -> list[list[float]]:
    """[batch index][layer] from {bs: [per layer]} (keys may be strings after JSON)."""
    table = measurement[name]
    if isinstance(table, dict):
        table = {int(k): v for k, v in table.items()}
        return [list(table[bs]) for bs in batch_sizes]
    return [list(row) for row in table]


def model_entry(stored: dict[str, Any]) -> dict[str, Any]:
    m, k = stored["measurement"], stored["reduction_factor"]
    element = int(m.get("param_dtype_bytes", FP32))
    entry = {
        "name": stored["model"], "hidden_size": int(m["hidden_size"]),
        "side_size": int(m.get("side_size") or max(1, int(m["hidden_size"]) // k)), "seq_len": stored["seq_len"],
        "layer_params": [int(b) // element for b in m["param_bytes"]],
        "side_layer_params": [int(b) // FP32 for b in m["side_param_bytes"]],
        "activation_bytes_per_sample": [float(b) for b in m["activation_bytes_per_sample"]],
    }
    for key, divisor in (("embedding_param_bytes", element), ("head_param_bytes", element),
                         ("side_extra_param_bytes", FP32)):
        if key in m:
            entry[key.replace("_param_bytes", "_params")] = int(m[key]) // divisor
    if "transient_bytes_per_sample" in m:
        entry["transient_bytes_per_sample"] = float(m["transient_bytes_per_sample"])
    return entry


def device_entry(stored: dict[str, Any], disk_budget_bytes: int) -> dict[str, Any]:
    sizes = sorted(int(b) for b in stored["batch_sizes"])
    m = stored["measurement"]
    forward, side_f, side_b = (_timings(m, n, sizes) for n in ("forward_s", "side_forward_s", "side_backward_s"))
    layers = len(forward[0])
    top = len(sizes) - 1
    entry = {
        "name": stored["node_id"], "memory_budget_bytes": int(stored["memory_budget_bytes"] * (1 - MEMORY_RESERVE)),
        "disk_budget_bytes": int(disk_budget_bytes), "batch_sizes": sizes,
        "forward_s": [[forward[i][layer] + side_f[i][layer] for i in range(len(sizes))] for layer in range(layers)],
        "backward_s": [[side_b[i][layer] for i in range(len(sizes))] for layer in range(layers)],
        "side_sample_s": max(sum(side_f[top]) + sum(side_b[top]), 1e-9) / sizes[top],
        # the daemon's memory with the model code loaded and no weights (profiles from before: none)
        "runtime_overhead_bytes": int(m.get("runtime_overhead_bytes") or 0),
        "call_s": float(m.get("call_s") or 0.0), "optimizer_s_per_param": float(m.get("optimizer_s_per_param") or 0.0),
        "half_padded_forward_ratio": float(m.get("half_padded_forward_ratio") or 1.0),  # before: no skipping
    }
    if m.get("cache_read_bytes_per_s"):  # phase 2 reads every record (profiles from before: free)
        entry["cache_read_bytes_per_s"] = float(m["cache_read_bytes_per_s"])
    if stored.get("host"):  # see with_host
        entry.update(host=str(stored["host"]), host_cores=int(stored.get("host_cores") or 0),
                     threads=int(m.get("threads") or 0))
    return entry


def with_host(stored: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """A device's stored profile with the machine it runs on (its NodeInfo's hostname and cores): devices
    of one machine share its cores, which the planner takes into account in phase 2."""
    return {**stored, "host": info.get("hostname") or "", "host_cores": int(info.get("cpu_count") or 0)}


def home_document(profiles: list[dict[str, Any]], disks: dict[str, int], links: list[dict[str, Any]]) -> dict:
    """The planner's JSON document; checked by the planner's own reader before it is returned."""
    if not profiles:
        raise ValueError("no device profiles to combine")
    document = {
        "version": PROFILE_FORMAT_VERSION,
        "model": model_entry(profiles[0]),
        "devices": [device_entry(p, disks.get(p["node_id"], 0)) for p in profiles],
        "links": [{"a": link["source"], "b": link["target"], "bandwidth_bytes_per_s": link["bandwidth_bytes_per_s"],
                   "latency_s": link["rtt_s"] / 2} for link in links],
    }
    if document["links"]:  # devices that join later are assumed no faster than the slowest measured link
        slowest = min(document["links"], key=lambda link: link["bandwidth_bytes_per_s"])
        document["default_link"] = {k: slowest[k] for k in ("bandwidth_bytes_per_s", "latency_s")}
    home_from_dict(document)  # the planner's own reader checks every field before the document is used
    return document
