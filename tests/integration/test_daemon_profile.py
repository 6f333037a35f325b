"""Profiling through a running daemon: the RPC, the store, shutdown while measuring, `pacctl profile`.

The measurement itself is pac.profiling's; here a stand-in injected into the daemon process (via
sitecustomize) returns fixed numbers after a delay, so these tests are fast and exact. The real
measurement of tiny models is exercised in test_profile_real_tiny_model when pac.profiling exists.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import grpc
import pytest
from click.testing import CliRunner

from pac.net.daemon_client import DaemonClient, DaemonError
from pac.planner.profile import load_home
from pacctl.commands.profile import command as profile_command

FAKE = '''
import sys, time, types, dataclasses, os
module = types.ModuleType("pac.profiling")

@dataclasses.dataclass(frozen=True)
class ModelMeasurement:
    forward_s: dict
    side_forward_s: dict
    side_backward_s: dict
    param_bytes: list
    activation_bytes_per_sample: list
    side_param_bytes: list
    hidden_size: int = 64
    def to_dict(self):
        return dataclasses.asdict(self)

def measure(model, batch_sizes, seq_len, reduction_factor=8, quantization="none", memory_budget=None):
    from pac.errors import ModelNotFoundError
    if model != "fake-model":
        raise ModelNotFoundError(f"unknown model {model!r}; known: fake-model")
    time.sleep(float(os.environ.get("FAKE_MEASURE_S", "0.2")))
    layers = 3
    speed = 0.5 if quantization == "bf16" else 1.0
    return ModelMeasurement({b: [0.001 * b * speed] * layers for b in batch_sizes},
                            {b: [0.0001 * b] * layers for b in batch_sizes},
                            {b: [0.0002 * b] * layers for b in batch_sizes},
                            [4000] * layers, [512.0] * layers, [400] * layers)

def model_code_bytes(model):
    return 100 << 20

module.ModelMeasurement, module.measure, module.model_code_bytes = ModelMeasurement, measure, model_code_bytes
sys.modules["pac.profiling"] = module
'''


@pytest.fixture
def fake_env(tmp_path):
    site = tmp_path / "fake-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE)
    from conftest import REPO

    return {"PYTHONPATH": f"{site}:{REPO}"}


def profile(d, identity, model="fake-model", **kwargs):
    async def run():
        async with DaemonClient(d.address, identity, d.node_id) as client:
            return await client.profile(model, kwargs.pop("sizes", [1, 4]), 16, 8, **kwargs)

    return asyncio.run(run())


def test_profile_is_measured_once_then_reused(daemons, cluster, fake_env):
    d = daemons.start(env=fake_env)
    first = profile(d, cluster.identity)
    assert not first["from_store"] and first["measurement"]["forward_s"]["4"] == pytest.approx([0.004] * 3)
    again = profile(d, cluster.identity)
    assert again["from_store"] and again["measurement"] == first["measurement"]
    assert not profile(d, cluster.identity, refresh=True)["from_store"]
    stored = list((d.state_dir / "profiles").glob("*.json"))
    assert len(stored) == 1 and stored[0].name.startswith(d.node_id) and stored[0].stat().st_mode & 0o077 == 0


def test_profile_is_kept_per_quantization(daemons, cluster, fake_env):
    d = daemons.start(env=fake_env)
    full = profile(d, cluster.identity)
    half = profile(d, cluster.identity, quantization="bf16")
    assert not half["from_store"] and half["quantization"] == "bf16" and full["quantization"] == "none"
    assert half["measurement"]["forward_s"]["4"] == pytest.approx([0.002] * 3)
    assert profile(d, cluster.identity, quantization="bf16")["from_store"]
    assert profile(d, cluster.identity)["measurement"] == full["measurement"]
    assert len(list((d.state_dir / "profiles").glob("*.json"))) == 2
    with pytest.raises(DaemonError) as caught:
        profile(d, cluster.identity, quantization="int3")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "quantization must be one of" in str(caught.value)


def test_unknown_model_is_not_found(daemons, cluster, fake_env):
    d = daemons.start(env=fake_env)
    with pytest.raises(DaemonError) as caught:
        profile(d, cluster.identity, model="no-such-model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and "unknown model" in str(caught.value)


def test_daemon_answers_while_measuring_and_sigterm_aborts_with_status(daemons, cluster, fake_env):
    d = daemons.start(env={**fake_env, "FAKE_MEASURE_S": "60"})

    async def run():
        async with DaemonClient(d.address, cluster.identity, d.node_id) as client:
            measuring = asyncio.create_task(client.profile("fake-model", [1], 16))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            info = await client.info()  # served while the measurement runs in its thread
            assert info["node_id"] == d.node_id and time.monotonic() - started < 2
            d.process.send_signal(signal.SIGTERM)
            with pytest.raises(DaemonError) as caught:
                await measuring
            return caught.value

    error = asyncio.run(run())
    assert error.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)
    assert d.process.wait(20) == 0


def test_pacctl_profile_writes_the_planner_format(daemons, cluster, fake_env, tmp_path):
    a, b = daemons.start(name="a", env=fake_env), daemons.start(name="b", env=fake_env)
    out, raw = tmp_path / "home-profile.json", tmp_path / "raw.json"
    result = CliRunner().invoke(profile_command, [
        "fake-model", "--home", str(cluster.home), "--no-mdns", "--peer", a.address, "--peer", b.address,
        "--batch-sizes", "1,4", "--seq-len", "16", "--out", str(out), "--raw", str(raw)])
    assert result.exit_code == 0, result.output
    home = load_home(out)
    assert {dev.name for dev in home.devices} == {a.node_id, b.node_id}
    assert home.model.layer_params == (1000, 1000, 1000) and home.model.side_size == 8
    assert home.devices[0].forward_s[0] == pytest.approx((0.0011, 0.0044))
    assert home.link(a.node_id, b.node_id).bandwidth_bytes_per_s > 0
    assert set(home.allreduce_probe[0]) == {a.node_id, b.node_id} and home.allreduce_probe[2] > 0  # a real ring
    assert home.allreduce_probe[1] >= 256 * 1024  # at least the probe's least, else the side network's gradients
    assert all(0 < d.round_trip_s < 5 for d in home.devices)  # the controller's empty call, measured
    assert len(json.loads(raw.read_text())["profiles"]) == 2


def test_profile_real_tiny_model(daemons, cluster):
    pytest.importorskip("pac.profiling", reason="pac.profiling (the lead's measurement) not present yet")
    d = daemons.start()
    result = profile(d, cluster.identity, model="tiny-bert", sizes=[1, 2])
    assert len(result["measurement"]["forward_s"]["2"]) >= 1
