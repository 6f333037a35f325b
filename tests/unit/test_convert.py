"""pac/net/convert/ round trips, and the committed stubs match proto/ (make proto-check)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pac.net.convert.common import info_to_dict, node_info, record_from_info
from pac.net.convert.daemon import profile_from_proto, profile_to_proto
from pac.v1 import common_pb2

REPO = Path(__file__).resolve().parents[2]


def stored_profile() -> dict:
    return {"node_id": "a" * 16, "model": "tiny-bert", "seq_len": 16, "reduction_factor": 8,
            "batch_sizes": [1, 4], "memory_budget_bytes": 2**30, "accelerator": "cpu",
            "measured_at_unix": 1.5, "elapsed_s": 2.0,
            "measurement": {"forward_s": {"1": [0.1, 0.2], "4": [0.3, 0.4]},
                            "side_forward_s": {"1": [0.01, 0.02], "4": [0.03, 0.04]},
                            "side_backward_s": {"1": [0.02, 0.03], "4": [0.05, 0.06]},
                            "param_bytes": [100, 100], "activation_bytes_per_sample": [64, 64],
                            "side_param_bytes": [10, 10], "hidden_size": 32}}


def test_profile_round_trip_keeps_unknown_fields():
    stored = stored_profile()
    back = profile_from_proto(profile_to_proto(stored))
    assert back["measurement"] == stored["measurement"]
    assert {k: back[k] for k in ("node_id", "model", "seq_len", "batch_sizes")} == \
        {k: stored[k] for k in ("node_id", "model", "seq_len", "batch_sizes")}


def test_timings_as_lists_in_batch_order():
    stored = stored_profile()
    for name in ("forward_s", "side_forward_s", "side_backward_s"):
        stored["measurement"][name] = list(stored["measurement"][name].values())
    assert profile_from_proto(profile_to_proto(stored))["measurement"]["forward_s"] == \
        {"1": [0.1, 0.2], "4": [0.3, 0.4]}


def test_node_info():
    info = node_info({"node_id": "a" * 16, "cluster_id": "", "memory_budget_bytes": 5})
    assert info.api_version == "v1"
    record = record_from_info(common_pb2.NodeInfo(**info_to_dict(info)), "h", 1, "static")
    assert (record.node_id, record.paired, record.address) == ("a" * 16, False, "h:1")


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_generated_stubs_match_protos():
    result = subprocess.run(["make", "-s", "proto-check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_home_document_carries_the_machine_a_device_runs_on():
    from pac.planner.profile import home_from_dict
    from pacd.homeprofile import home_document, with_host

    stored = stored_profile()
    stored["measurement"]["threads"] = 1
    back = profile_from_proto(profile_to_proto({**stored, "quantization": "bf16"}))
    assert back["quantization"] == "bf16" and back["measurement"]["threads"] == 1
    twins = [with_host({**back, "node_id": n}, {"hostname": "box", "cpu_count": 2}) for n in ("a" * 16, "b" * 16)]
    link = {"source": "a" * 16, "target": "b" * 16, "bandwidth_bytes_per_s": 1e9, "rtt_s": 1e-4}
    home = home_from_dict(home_document(twins, {}, [link]))
    assert [(d.host, d.host_cores, d.threads) for d in home.devices] == [("box", 2, 1)] * 2
    alone = home_from_dict(home_document([back], {}, []))
    assert alone.devices[0].host == ""  # no machine given: planned as a machine of its own
