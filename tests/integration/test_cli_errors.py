"""What a person sees when a command cannot do what was asked: one line naming what is wrong and what to do,
and a non-zero exit; never a traceback (that is what --debug is for)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

PACCTL = [sys.executable, "-m", "pacctl"]


def pacctl(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAC_HOME": str(home)}
    return subprocess.run([*PACCTL, *args], env=env, capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def test_train_before_init_says_run_pacctl_init(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'version = 1\n[model]\nname_or_path = "tiny-bert"\n[data]\ntrain = "{tmp_path / "d.jsonl"}"\n'
                   f'task = "classification"\n[output]\ndirectory = "{tmp_path / "out"}"\n')
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 0}\n')
    line = one_line_error(pacctl(tmp_path / "nohome", "train", str(job)))
    assert "run 'pacctl init' first" in line


def test_pair_with_nothing_listening_names_the_address_and_asks_if_pacd_runs(tmp_path):
    pacctl(tmp_path / "home", "init")
    port = closed_port()
    line = one_line_error(pacctl(tmp_path / "home", "pair", f"127.0.0.1:{port}", "--code", "X"))
    assert f"127.0.0.1:{port}" in line and "Connection refused" in line and "is pacd running" in line


def test_pairing_a_paired_device_again_and_insecure_against_tls_say_what_is_the_matter(daemons, cluster, tmp_path):
    daemon = daemons.start(secure=True)
    line = one_line_error(pacctl(cluster.home, "pair", daemon.address, "--code", "X"))
    assert f"device {daemon.node_id} is paired with this home already" in line
    pacctl(tmp_path / "other", "init")
    line = one_line_error(pacctl(tmp_path / "other", "pair", daemon.address, "--code", "X"))
    assert "paired with another home" in line and "remove STATE_DIR/tls/cert.pem" in line
    line = one_line_error(pacctl(cluster.home, "models", "--insecure", "--no-mdns", "--peer", daemon.address))
    assert "leave out --insecure" in line, line
    # and the daemon says, in one line of its log, whom it refused and why
    deadline = time.monotonic() + 10
    while "does not speak TLS" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    refused = [line for line in daemon.log().splitlines() if "refused a TLS connection from 127.0.0.1:" in line]
    assert any("it does not speak TLS (a client in --insecure mode?)" in line for line in refused), daemon.log()
    assert "Handshake failed with error" not in daemon.log()  # the core's line without the peer is replaced


def test_both_commands_say_their_version():
    from importlib.metadata import version

    for command in (PACCTL, [sys.executable, "-m", "pacd"]):
        result = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.split() == [command[-1], version("pac")], result
