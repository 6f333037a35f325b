"""Real daemons on 127.0.0.1, port 0, temporary state directories; every one is killed at teardown.

Reusable by any integration test:

    def test_x(daemons, cluster):            # `daemons` starts, `cluster` is a controller home
        d = daemons.start(secure=True)       # a paired daemon (mutual TLS), or secure=False: insecure
        async with secure_channel(d.address, cluster.identity, d.node_id) as channel: ...

`start_daemon(tmp_path, secure=...)` is the same without the fixture (then call `.kill()` yourself).
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # failed handshakes while a daemon restarts are expected
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pac.cluster.local import pacd_args, wait_for_port
from pac.security import Identity
from pac.security.home import init_home

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


@dataclass
class RunningDaemon:
    process: subprocess.Popen
    port: int
    state_dir: Path
    log_path: Path

    def __iter__(self):  # unpacks as (process, port, state_dir)
        return iter((self.process, self.port, self.state_dir))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node_id(self) -> str:
        return (self.state_dir / "node_id").read_text().strip()

    def pairing_code(self) -> str:
        return (self.state_dir / "pairing-code").read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@dataclass
class Cluster:
    home: Path
    identity: Identity


def start_daemon(tmp_path: Path, secure: bool = True, name: str = "d", mdns: bool = False,
                 extra_args: tuple[str, ...] = (), state_dir: Path | None = None,
                 env: dict[str, str] | None = None, memory_budget: str = "1GiB") -> RunningDaemon:
    """Start `pacd serve` on 127.0.0.1:0 and wait until it listens. secure=False: insecure mode.

    A secure daemon starts unpaired (pairing mode); pair it with `pair_daemon` (the fixture does)."""
    state_dir = state_dir or tmp_path / f"{name}-state"
    port_file = tmp_path / f"{name}-{time.monotonic_ns()}.port"
    log_path = tmp_path / f"{name}-{time.monotonic_ns()}.log"
    args = pacd_args(state_dir, port_file, memory_budget, secure, "127.0.0.1" if mdns else None, tuple(extra_args))
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("NOTIFY_SOCKET", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    port = wait_for_port(process, port_file, time.monotonic() + START_TIMEOUT_S)
    if port is None:
        process.kill()
        process.wait(10)
        raise RuntimeError(f"pacd did not start (exit {process.returncode}):\n{log_path.read_text()}")
    return RunningDaemon(process, port, state_dir, log_path)


def start_daemons(tmp_path: Path, count: int, prefix: str, secure: bool = False) -> list[RunningDaemon]:
    """`count` daemons started side by side (each spends seconds importing), named prefix0, prefix1, ..."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: start_daemon(tmp_path, secure=secure, name=f"{prefix}{i}"), range(count)))


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """Four insecure daemons for the whole module: each job releases them when it ends."""
    running = start_daemons(tmp_path_factory.mktemp("daemons"), 4, "n")
    yield running
    for daemon in running:
        daemon.kill()


def device_jobs(daemons: list[RunningDaemon]) -> list[str]:
    """The job each insecure daemon holds now ("" for none), as Stage.Status says."""
    import asyncio

    import grpc

    from pac.v1 import stage_pb2, stage_pb2_grpc

    async def ask():
        out = []
        for daemon in daemons:
            async with grpc.aio.insecure_channel(daemon.address) as channel:
                reply = await stage_pb2_grpc.StageStub(channel).Status(stage_pb2.StageStatusRequest(), timeout=5)
                out.append(reply.job_id)
        return out

    return asyncio.run(ask())


def pair_daemon(daemon: RunningDaemon, cluster: Cluster) -> None:
    """Pair with the code the daemon wrote to its state dir, then wait until it serves mutual TLS."""
    from pac.net.daemon_client import pair

    asyncio.run(pair("127.0.0.1", daemon.port, cluster.home, lambda info: daemon.pairing_code()))
    wait_mutual_tls(daemon, cluster.identity)


def wait_mutual_tls(daemon: RunningDaemon, identity: Identity) -> dict:
    """The daemon's info once it answers `identity` in mutual TLS (after pairing, or a restart)."""
    from pac.net.daemon_client import DaemonClient, DaemonError

    async def wait() -> dict:
        for _ in range(100):
            try:
                async with DaemonClient(daemon.address, identity, daemon.node_id) as client:
                    return await client.info()
            except DaemonError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"daemon did not come back in mutual TLS:\n{daemon.log()}")

    return asyncio.run(wait())


@dataclass
class DaemonPool:
    tmp_path: Path
    cluster: Cluster
    running: list[RunningDaemon] = field(default_factory=list)

    def start(self, secure: bool = True, paired: bool = True, name: str | None = None, mdns: bool = False,
              cluster: Cluster | None = None, **kwargs) -> RunningDaemon:
        daemon = start_daemon(self.tmp_path, secure, name or f"d{len(self.running)}", mdns, **kwargs)
        self.running.append(daemon)
        if secure and paired:
            pair_daemon(daemon, cluster or self.cluster)
        return daemon

    def kill_all(self) -> None:
        for daemon in self.running:
            daemon.kill()


def make_cluster(path: Path) -> Cluster:
    identity = init_home(path)
    return Cluster(path, identity)


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return make_cluster(tmp_path / "controller")


@pytest.fixture
def daemons(tmp_path: Path, cluster: Cluster):
    pool = DaemonPool(tmp_path, cluster)
    try:
        yield pool
    finally:
        pool.kill_all()


def copy_state(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
