"""sd_notify against a real AF_UNIX datagram socket, and the systemd unit checked by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pacd import notify

REPO = Path(__file__).resolve().parents[2]


def _listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    return sock


def test_ready_and_stopping_reach_the_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with _listener(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify.ready("serving")
        message = sock.recv(4096).decode().split("\n")
        assert message[0] == "READY=1" and f"MAINPID={os.getpid()}" in message and "STATUS=serving" in message
        assert notify.stopping("SIGTERM")
        assert sock.recv(4096).decode() == "STOPPING=1\nSTATUS=SIGTERM"


def test_abstract_socket(monkeypatch):
    name = f"pac-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.status("hello")
        assert sock.recv(100) == b"STATUS=hello"


def test_nothing_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:5"}) is False


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt-get install systemd)")
def test_unit_for_this_install_passes_systemd_analyze_verify_and_security(tmp_path):
    """`make unit` writes the unit for this clone's .venv as it is installed; systemd checks it as it
    would the installed one, and rates its exposure at most 2.0."""
    if not (REPO / ".venv/bin/pacd").exists():
        pytest.skip("the pacd entry point is not installed (make install)")
    target = tmp_path / "pacd.service"
    subprocess.run(["make", "-s", "-C", str(REPO), "unit", f"UNIT={target}"], check=True, capture_output=True,
                   timeout=60)
    unit = target.read_text()
    assert f"ExecStart={REPO}/.venv/bin/pacd serve " in unit
    assert "Type=notify" in unit and "Restart=on-failure" in unit and "StateDirectory=pacd" in unit
    result = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pacd.service" not in result.stderr, result.stderr  # no warnings about our unit
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(target)], capture_output=True,
                              text=True, timeout=60)
    score = re.search(r"Overall exposure level for pacd.service: ([0-9.]+)", security.stdout)
    assert score is not None, security.stdout + security.stderr
    assert float(score.group(1)) <= 2.0, security.stdout
