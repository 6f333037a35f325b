"""Devices a home pairs are remembered (found again without --peer where multicast does not pass), and a
device the home unpairs is revoked: every other device refuses its certificate."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from conftest import wait_mutual_tls

from pac.net.daemon_client import DaemonClient, DaemonError
from pac.security import load_identity


def pacctl(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAC_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "pacctl", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def paired_by_pacctl(daemon, home) -> None:
    done = pacctl(home, "pair", daemon.address, "--code", daemon.pairing_code())
    assert done.returncode == 0 and "remembered at" in done.stdout, done.stdout + done.stderr
    wait_mutual_tls(daemon, load_identity(home))  # the daemon restarts in mutual TLS


def info_as(identity, daemon) -> dict:
    """The daemon's GetInfo, called with `identity`'s certificate (DaemonError if it is refused)."""
    async def ask() -> dict:
        async with DaemonClient(daemon.address, identity, daemon.node_id) as client:
            return await client.info()

    return asyncio.run(ask())


def test_paired_once_found_without_peer_and_unpaired_refused_by_the_others(daemons, cluster, tmp_path):
    from pac.jobfile import parse_job
    from pacctl.commands.train import find_job_devices

    phone, nas = daemons.start(paired=False, name="phone"), daemons.start(paired=False, name="nas")
    for daemon in (phone, nas):
        paired_by_pacctl(daemon, cluster.home)
    listed = pacctl(cluster.home, "devices", "--no-mdns")  # no --peer: the remembered addresses
    assert listed.returncode == 0 and listed.stdout.count("(remembered)") == 2, listed.stdout
    assert phone.node_id in listed.stdout and nas.node_id in listed.stdout
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n')
    job = parse_job({"model": {"name_or_path": "tiny-bert"},
                     "data": {"train": str(tmp_path / "d.jsonl"), "task": "classification"},
                     "devices": {"mode": "discover", "mdns_timeout": 0.2},
                     "output": {"directory": str(tmp_path / "out")}}, source="job.toml")
    devices, _, _ = find_job_devices(job, cluster.home)  # what `pacctl train` uses
    assert {d.node_id for d in devices} == {phone.node_id, nas.node_id}

    unpaired = pacctl(cluster.home, "unpair", phone.node_id[:6])
    assert unpaired.returncode == 0 and f"unpaired {phone.node_id}" in unpaired.stdout, unpaired.stderr

    with pytest.raises(DaemonError) as refused:
        info_as(load_identity(phone.state_dir), nas)
    assert refused.value.code.name == "UNAUTHENTICATED" and "revoked" in str(refused.value)

    assert info_as(cluster.identity, nas)["revocation_number"] == 1  # the nas holds the home's list
    listed = pacctl(cluster.home, "devices", "--no-mdns")
    assert phone.node_id not in listed.stdout and nas.node_id in listed.stdout, listed.stdout

    # a device paired before the home remembered devices: unpaired by the certificate it serves
    legacy = daemons.start(name="legacy")  # paired, not remembered; it was away when the phone was unpaired
    refreshed = pacctl(cluster.home, "devices", "--no-mdns", "--peer", legacy.address)  # any command sends the list
    assert refreshed.returncode == 0, refreshed.stderr
    with pytest.raises(DaemonError) as refused:
        info_as(load_identity(phone.state_dir), legacy)
    assert refused.value.code.name == "UNAUTHENTICATED" and "revoked" in str(refused.value)
    unpaired = pacctl(cluster.home, "unpair", legacy.node_id, "--peer", legacy.address)
    assert unpaired.returncode == 0 and f"unpaired {legacy.node_id}" in unpaired.stdout, unpaired.stderr

    with pytest.raises(DaemonError) as refused:
        info_as(load_identity(legacy.state_dir), nas)
    assert refused.value.code.name == "UNAUTHENTICATED"

    # a home-automation client's certificate, revoked by `client remove`
    assert pacctl(cluster.home, "client", "add", "ha").returncode == 0
    client = load_identity(cluster.home / "clients" / "ha")

    assert info_as(client, nas)["node_id"] == nas.node_id
    removed = pacctl(cluster.home, "client", "remove", "ha")
    assert removed.returncode == 0 and "revoked" in removed.stdout, removed.stdout + removed.stderr
    with pytest.raises(DaemonError) as refused:
        info_as(client, nas)
    assert refused.value.code.name == "UNAUTHENTICATED" and info_as(cluster.identity, nas)["revocation_number"] == 3

    # fresh certificates for the devices and the controller; the device serves on its new one
    from cryptography import x509

    from pac.net.daemon_client import fetch_server_certificate

    before = x509.load_pem_x509_certificate(fetch_server_certificate("127.0.0.1", nas.port)).serial_number
    renewed = pacctl(cluster.home, "renew")
    assert renewed.returncode == 0 and f"{nas.node_id} (127.0.0.1:{nas.port}): renewed until" in renewed.stdout, \
        renewed.stdout + renewed.stderr
    assert "this controller: renewed until" in renewed.stdout
    stored = x509.load_pem_x509_certificate(load_identity(nas.state_dir).cert_pem)
    assert stored.serial_number != before  # kept by the device
    for _ in range(100):  # it restarts its server on the new one
        try:
            served = x509.load_pem_x509_certificate(fetch_server_certificate("127.0.0.1", nas.port)).serial_number
        except OSError:  # between its two servers
            served = None
        if served == stored.serial_number:
            break
        time.sleep(0.1)
    assert served == stored.serial_number
    assert wait_mutual_tls(nas, load_identity(cluster.home))["node_id"] == nas.node_id

    # unpairing a renewed device revokes the certificate it was issued before too (valid until it expires)
    from pac.security.revocation import load_revocations

    unpaired = pacctl(cluster.home, "unpair", nas.node_id)
    assert unpaired.returncode == 0 and f"unpaired {nas.node_id}" in unpaired.stdout, unpaired.stderr
    assert {before, stored.serial_number} <= load_revocations(cluster.home).serials
