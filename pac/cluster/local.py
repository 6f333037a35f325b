"""A home of N daemons on this machine, for the demo and benchmarks: `pacd serve` processes on 127.0.0.1,
each with its own state directory, paired with a fresh cluster authority (mutual TLS), stopped at exit.

    with LocalCluster(root, count=3) as cluster:
        run_training(job, cluster.devices, cluster.identity, ...)

`secure=False` starts them in insecure mode instead (plaintext loopback development; they say so).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pac.cluster.context import Device
from pac.errors import PacError
from pac.security import Identity

START_TIMEOUT_S = 60.0


def pacd_args(state_dir: Path, port_file: Path, memory_budget: str, secure: bool,
              mdns_interface: str | None = None, extra: tuple[str, ...] = (), host: str = "127.0.0.1") -> list[str]:
    """`pacd serve` on `host`, a free port written to `port_file`; mDNS only on `mdns_interface`."""
    return [sys.executable, "-m", "pacd", "serve", "--host", host, "--port", "0",
            *(["--mdns-interface", mdns_interface] if mdns_interface else ["--no-mdns"]),
            "--state-dir", str(state_dir), "--port-file", str(port_file), "--memory-budget", memory_budget,
            *([] if secure else ["--insecure"]), *extra]


def wait_for_port(process: subprocess.Popen, port_file: Path, deadline: float) -> int | None:
    """The port a starting pacd wrote; None if it exited or `deadline` (time.monotonic()) passed first."""
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return int(port_file.read_text())


@dataclass
class LocalDaemon:
    process: subprocess.Popen
    port: int
    state_dir: Path
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def node_id(self) -> str:
        return (self.state_dir / "node_id").read_text().strip()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalCluster:
    def __init__(self, root: Path, count: int, secure: bool = True, memory_budget: str = "4GiB",
                 threads: int | None = None, reuse: bool = False, hosts: list[str] | None = None,
                 prefixes: list[list[str]] | None = None) -> None:
        """`reuse`: start the daemons of an earlier run under `root` again (their node ids, pairing and
        state, so a stopped job resumes on the same devices) where it left them all paired. `hosts` and
        `prefixes`: each daemon's address and the command it starts under (e.g. `ip netns exec NAME`, an
        emulated home network: bench/netns.py); default 127.0.0.1, none."""
        if not 1 <= count <= 16:
            raise PacError(f"a local cluster has 1..16 daemons, not {count}")
        self.root, self.count, self.secure = Path(root), count, secure
        self.memory_budget, self.threads = memory_budget, threads
        self.daemons: list[LocalDaemon] = []
        self.identity: Identity | None = None
        self.reuse = reuse
        self.hosts, self.prefixes = hosts or ["127.0.0.1"] * count, prefixes or [[]] * count

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def devices(self) -> list[Device]:
        return [Device(d.node_id, d.address, "localhost") for d in self.daemons]

    def start(self) -> None:
        from pac.security import is_paired, load_identity
        from pac.security.home import init_home

        self.root.mkdir(parents=True, exist_ok=True)
        reuse = self.reuse and self.secure and (self.root / "home" / "ca" / "key.pem").exists() and all(
            is_paired(self.root / f"device{i}") for i in range(self.count))
        if self.secure:
            self.identity = load_identity(self.root / "home") if reuse else init_home(self.root / "home", force=True)
        for index in range(self.count):
            self.daemons.append(self._spawn(index, fresh=not reuse))
        deadline = time.monotonic() + START_TIMEOUT_S
        for daemon in self.daemons:
            port = wait_for_port(daemon.process, daemon.state_dir.parent / f"{daemon.state_dir.name}.port", deadline)
            if port is None:
                raise PacError(f"pacd did not start (exit {daemon.process.poll()}):\n{daemon.log_tail()}")
            daemon.port = port
        if self.secure and not reuse:
            for daemon in self.daemons:
                asyncio.run(self._pair(daemon))

    def _spawn(self, index: int, fresh: bool = True) -> LocalDaemon:
        state = self.root / f"device{index}"
        if fresh and state.exists():  # a fresh identity for the run: pairing needs an unpaired daemon
            import shutil

            shutil.rmtree(state)
        port_file = self.root / f"device{index}.port"
        port_file.unlink(missing_ok=True)
        log_path = self.root / f"device{index}.log"
        host = self.hosts[index]
        # started for a job that follows at once: they import the training code while the controller prepares
        args = [*self.prefixes[index], *pacd_args(state, port_file, self.memory_budget, self.secure,
                                                   extra=("--warm-up",), host=host)]
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        # Daemons on one machine share its cores: each gets its share of threads, and OpenMP threads
        # sleep instead of spinning while their daemon waits for a peer (spinning threads of one daemon
        # would take the cores another daemon is computing on; measured: first steps 10-20x slower).
        env["OMP_NUM_THREADS"] = str(self.threads or max(1, (os.cpu_count() or 1) // self.count))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        return LocalDaemon(process, 0, state, log_path, host)

    async def _pair(self, daemon: LocalDaemon) -> None:
        from pac.net.daemon_client import DaemonClient, DaemonError, pair

        await pair(daemon.host, daemon.port, self.root / "home",
                   lambda info: (daemon.state_dir / "pairing-code").read_text().strip())
        for _ in range(200):  # the daemon restarts in mutual TLS
            try:
                async with DaemonClient(daemon.address, self.identity, daemon.node_id) as client:
                    await client.info()
                return
            except DaemonError:
                await asyncio.sleep(0.1)
        raise PacError(f"{daemon.address} did not come back in mutual TLS after pairing:\n{daemon.log_tail()}")

    def stop(self) -> None:
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.process.wait(20)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(10)
        self.daemons = []
