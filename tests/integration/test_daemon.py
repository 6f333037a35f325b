"""The daemon as a process: mutual TLS and pairing, health, reflection, validation, shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import REPO, make_cluster
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pac.discovery.mdns import browse
from pac.net.daemon_client import DaemonClient, DaemonError, pair
from pac.security import secure_channel
from pac.v1 import daemon_pb2, daemon_pb2_grpc


def call(address, identity, method, request, node_id=None):
    """One unary call over mutual TLS; returns the reply or the AioRpcError."""

    async def run():
        async with secure_channel(address, identity, node_id) as channel:
            try:
                return await method(channel)(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                return error

    return asyncio.run(run())


def get_info(channel):
    return daemon_pb2_grpc.DeviceStub(channel).GetInfo


def test_paired_client_succeeds_with_node_identity(daemons, cluster):
    d = daemons.start()
    info = call(d.address, cluster.identity, get_info, daemon_pb2.GetInfoRequest(), d.node_id)
    assert (info.node_id, info.cluster_id, info.paired, info.insecure) == (d.node_id, cluster.identity.cluster_id,
                                                                           True, False)
    assert info.memory_budget_bytes == 2**30
    assert not (d.state_dir / "pairing-code").exists()


def test_unpaired_client_and_other_cluster_are_unauthenticated(daemons, cluster, tmp_path):
    d = daemons.start()
    no_certificate = replace(cluster.identity, cert_pem=b"")
    other = make_cluster(tmp_path / "other-home").identity
    for identity in (no_certificate, other):
        error = call(d.address, identity, get_info, daemon_pb2.GetInfoRequest())
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert "pacctl pair" in call(d.address, no_certificate, get_info, daemon_pb2.GetInfoRequest()).details()


def test_unpaired_daemon_answers_only_pairing(daemons, cluster):
    d = daemons.start(paired=False)

    async def run():
        async with DaemonClient(d.address, None) as client:  # plaintext to a TLS port is refused anyway
            with pytest.raises(DaemonError):
                await client.info()

    asyncio.run(run())
    from pac.security.identity import tls_dir

    served = (tls_dir(d.state_dir) / "self.pem").read_bytes()

    async def gated():
        creds = grpc.ssl_channel_credentials(root_certificates=served)
        options = [("grpc.ssl_target_name_override", f"{d.node_id}.node.pac")]
        async with grpc.aio.secure_channel(d.address, creds, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await daemon_pb2_grpc.DeviceStub(channel).GetInfo(daemon_pb2.GetInfoRequest(), timeout=5)
            return caught.value

    error = asyncio.run(gated())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "not paired" in error.details()


def test_wrong_pairing_code_is_refused_then_right_code_pairs(daemons, cluster):
    d = daemons.start(paired=False)
    with pytest.raises(DaemonError) as caught:
        asyncio.run(pair("127.0.0.1", d.port, cluster.home, lambda info: "AAAAA-AAAAA"))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED and "4 attempts left" in str(caught.value)
    with pytest.raises(ValueError):
        asyncio.run(pair("127.0.0.1", d.port, cluster.home, lambda info: "not a code"))
    info = asyncio.run(pair("127.0.0.1", d.port, cluster.home, lambda info: d.pairing_code()))
    assert info["cluster_id"] == cluster.identity.cluster_id


def test_health_and_reflection_answer(daemons, cluster):
    d = daemons.start()

    def health(channel):
        return health_pb2_grpc.HealthStub(channel).Check

    for service in ("", "pac.v1.Device", "pac.v1.Link", "pac.v1.Pairing"):
        reply = call(d.address, cluster.identity, health, health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

    async def services():
        async with secure_channel(d.address, cluster.identity) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request]), timeout=10):
                return {s.name for s in reply.list_services_response.service}

    names = asyncio.run(services())
    assert {"pac.v1.Device", "pac.v1.Link", "pac.v1.Pairing", "grpc.health.v1.Health"} <= names


BAD_REQUESTS = [
    ("Profile", daemon_pb2.ProfileRequest(model="../etc/passwd", batch_sizes=[1], seq_len=8), "model"),
    ("Profile", daemon_pb2.ProfileRequest(model="tiny-bert", batch_sizes=[], seq_len=8), "batch_sizes"),
    ("Profile", daemon_pb2.ProfileRequest(model="tiny-bert", batch_sizes=[1, 100000], seq_len=8), "batch_sizes"),
    ("Profile", daemon_pb2.ProfileRequest(model="tiny-bert", batch_sizes=[1], seq_len=0), "seq_len"),
    ("Profile", daemon_pb2.ProfileRequest(model="tiny-bert", batch_sizes=[1], seq_len=8,
                                          reduction_factor=1000), "reduction_factor"),
    ("Echo", daemon_pb2.EchoRequest(reply_bytes=1 << 30), "reply_bytes"),
    ("ProbePeer", daemon_pb2.ProbePeerRequest(address="no port here:x"), "address"),
    ("ProbePeer", daemon_pb2.ProbePeerRequest(address="127.0.0.1:1", peer_node_id="XYZ"), "peer_node_id"),
    ("ProbePeer", daemon_pb2.ProbePeerRequest(address="127.0.0.1:1", rounds=1000), "rounds"),
]


def test_malformed_requests_get_invalid_argument_and_daemon_keeps_serving(daemons, cluster):
    d = daemons.start()
    for method, request, field in BAD_REQUESTS:
        stub = daemon_pb2_grpc.DeviceStub if method == "Profile" else daemon_pb2_grpc.LinkStub
        error = call(d.address, cluster.identity, lambda ch, s=stub, m=method: getattr(s(ch), m), request)
        assert isinstance(error, grpc.aio.AioRpcError), (method, field)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details(), error.details()
    oversize = daemon_pb2.EchoRequest(payload=bytes(9 * 1024 * 1024))
    error = call(d.address, cluster.identity, lambda ch: daemon_pb2_grpc.LinkStub(ch).Echo, oversize)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call(d.address, cluster.identity, get_info, daemon_pb2.GetInfoRequest()).node_id == d.node_id
    assert d.process.poll() is None


def test_probe_between_two_daemons_over_mutual_tls(daemons, cluster):
    a, b = daemons.start(name="a"), daemons.start(name="b")

    async def run():
        async with DaemonClient(a.address, cluster.identity, a.node_id) as client:
            return await client.probe(b.address, b.node_id, payload_bytes=64 * 1024, rounds=3)

    link = asyncio.run(run())
    assert (link["source"], link["target"]) == (a.node_id, b.node_id)
    assert link["rtt_s"] > 0 and link["bandwidth_bytes_per_s"] > 0


def test_sigterm_exits_zero_and_withdraws_mdns(daemons):
    d = daemons.start(secure=False, mdns=True)
    records, _ = asyncio.run(browse(1.5, ["127.0.0.1"]))
    assert d.node_id in {r.node_id for r in records}
    assert d.stop(signal.SIGTERM) == 0
    assert "stopped" in d.log() and "registration withdrawn" in d.log()
    records, _ = asyncio.run(browse(1.5, ["127.0.0.1"]))
    assert d.node_id not in {r.node_id for r in records}


def test_sigint_exits_zero(daemons):
    d = daemons.start(secure=False)
    assert d.stop(signal.SIGINT) == 0


def test_insecure_mode_refuses_non_loopback_and_warns(daemons, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pacd", "serve", "--insecure", "--host", "0.0.0.0",
                             "--state-dir", str(tmp_path / "s")], capture_output=True, text=True, cwd=REPO,
                            timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "loopback" in result.stderr
    d = daemons.start(secure=False)
    assert "INSECURE MODE" in d.log()


def test_bad_config_is_one_line_error(tmp_path):
    config = tmp_path / "pacd.toml"
    config.write_text('port = "seven"\n')
    result = subprocess.run([sys.executable, "-m", "pacd", "serve", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=30)
    assert result.returncode == 1 and result.stderr.startswith("pacd: error: port") and "Traceback" not in result.stderr


def test_an_idle_daemon_holds_no_pytorch_until_a_job_needs_it(tmp_path):
    from conftest import start_daemon

    from pac.v1 import stage_pb2, stage_pb2_grpc

    daemon = start_daemon(tmp_path, secure=False, name="idle")

    def holds_torch() -> bool:
        return "libtorch" in Path(f"/proc/{daemon.process.pid}/maps").read_text()

    async def calls():
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            stage = stage_pb2_grpc.StageStub(channel)
            status = await stage.Status(stage_pb2.StageStatusRequest(), timeout=10)
            released = await stage.Release(stage_pb2.ReleaseRequest(job_id="job-gone"), timeout=10)
            renewed = await stage.Renew(stage_pb2.RenewRequest(job_id="job-gone", lease_s=30), timeout=10)
            before = holds_torch()  # what a controller asks of a device that holds no job imports nothing
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stage.RunStep(stage_pb2.RunStepRequest(job_id="job-gone"), timeout=60)
            return status, released, renewed, before, refused.value

    try:
        status, released, renewed, before, refused = asyncio.run(calls())
        assert (status.job_id, released.released, renewed.held, before) == ("", False, False, False)
        # a job's own call imports the training code and is answered by it
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "holds no job 'job-gone'" in refused.details()
        assert holds_torch()
    finally:
        daemon.stop()
    assert "idle: resident" in daemon.log_path.read_text()
