"""A bare daemon that serves only TensorStream and Collective, for tests and benchmarks of this layer.

    python -m bench.devserver [--host 127.0.0.1] [--port 0] [--tls-ca CA --tls-cert PEM --tls-key KEY]

Prints "listening HOST:PORT" once serving, stops on SIGTERM/SIGINT. With the three --tls-* files it
requires a client certificate from the same CA (mutual TLS) and dials peers with its own certificate.
Production daemons are `pacd serve`; this exists so the ring can be measured and killed in isolation.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
import torch

from bench.devtls import SERVER_NAME
from pac.net.channels import CHANNEL_OPTIONS
from pac.net.node import node_for

REPO = Path(__file__).resolve().parents[1]  # `python -m bench.devserver` runs from here


class DevDaemon:
    """What the servicers need of a daemon: a way to open channels to peers."""

    def __init__(self, credentials: grpc.ChannelCredentials | None) -> None:
        self._credentials = credentials

    def channel(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        options = (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", SERVER_NAME))
        return grpc.aio.secure_channel(address, self._credentials, options=options)


async def serve(host: str, port: int, tls: tuple[Path, Path, Path] | None) -> None:
    from pacd.services import collective, tensor

    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    credentials = None
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        ca, cert, key = (path.read_bytes() for path in tls)
        server_credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        bound = server.add_secure_port(address, server_credentials)
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
    # One intra-op thread: the ring's adds are small, and idle OpenMP workers spinning for more work
    # take the cores that the other daemons on this machine need for their network I/O.
    torch.set_num_threads(1)
    daemon = DevDaemon(credentials)
    tensor.register(server, daemon)
    collective.register(server, daemon)
    await server.start()
    print(f"listening {host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await node_for(daemon).close()
        await server.stop(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.devserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-ca", type=Path)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(given) and not all(given):
        print("devserver: give all of --tls-ca, --tls-cert and --tls-key, or none", file=sys.stderr)
        return 2
    asyncio.run(serve(args.host, args.port, tuple(given) if all(given) else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())


class DevCluster:
    """Starts dev servers as child processes and always stops them; `addresses` in rank order.

    hosts: one listening host per server (default 127.0.0.1); prefixes: a command prefix per server,
    e.g. ["ip", "netns", "exec", "pacns0"] to start it inside a network namespace.
    """

    def __init__(
        self,
        count: int,
        tls_dir: Path | None = None,
        hosts: list[str] | None = None,
        prefixes: list[list[str]] | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.count = count
        self.tls_dir = tls_dir
        self.hosts = hosts or ["127.0.0.1"] * count
        self.prefixes = prefixes or [[] for _ in range(count)]
        self.start_timeout_s = start_timeout_s
        self.processes: list = []
        self.addresses: list[str] = []

    def __enter__(self) -> DevCluster:
        import subprocess
        import time

        from bench.devtls import make_tls_dir

        files = make_tls_dir(self.tls_dir, self.count) if self.tls_dir else None
        try:
            for index in range(self.count):
                command = [*self.prefixes[index], sys.executable, "-m", "bench.devserver", "--host", self.hosts[index]]
                if files:
                    entry = files[index]
                    command += ["--tls-ca", str(entry.ca), "--tls-cert", str(entry.cert), "--tls-key", str(entry.key)]
                self.processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO))
            deadline = time.monotonic() + self.start_timeout_s
            for process in self.processes:
                line = _read_line(process, deadline - time.monotonic())
                if not line.startswith("listening "):
                    raise RuntimeError(f"dev server {process.args} did not start: {line!r}")
                self.addresses.append(line.split()[1])
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Client credentials for a controller talking to these servers (node0's certificate)."""
        if not self.tls_dir:
            return None
        d = self.tls_dir
        return grpc.ssl_channel_credentials(
            (d / "ca.pem").read_bytes(), (d / "node0.key").read_bytes(), (d / "node0.pem").read_bytes()
        )

    def channel(self, address: str) -> grpc.aio.Channel:
        return DevDaemon(self.credentials()).channel(address)

    def kill(self, index: int) -> None:
        self.processes[index].kill()
        self.processes[index].wait()

    def stop(self) -> None:
        import subprocess

        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()


def _read_line(process, timeout_s: float) -> str:
    import select

    ready, _, _ = select.select([process.stdout], [], [], max(timeout_s, 0.0))
    if not ready:
        raise RuntimeError(f"dev server {process.args} printed nothing within the start timeout")
    return process.stdout.readline().strip()


class LocalServers:
    """In-process servers (one event loop) hosting TensorStream and Collective on 127.0.0.1 port 0.

        async with LocalServers(3) as servers:
            servers.nodes[0]      # the PeerNode behind servers.addresses[0]
    """

    def __init__(self, count: int, receive_buffer_bytes: int | None = None) -> None:
        self.count = count
        self.receive_buffer_bytes = receive_buffer_bytes
        self.servers: list[grpc.aio.Server] = []
        self.daemons: list[DevDaemon] = []
        self.addresses: list[str] = []

    @property
    def nodes(self):
        return [node_for(daemon) for daemon in self.daemons]

    async def __aenter__(self) -> LocalServers:
        from pac.net.node import NodeConfig, PeerNode, attach_node
        from pacd.services import collective, tensor

        try:
            for _ in range(self.count):
                server = grpc.aio.server(options=CHANNEL_OPTIONS)
                daemon = DevDaemon(None)
                if self.receive_buffer_bytes is not None:
                    config = NodeConfig(receive_buffer_bytes=self.receive_buffer_bytes)
                    attach_node(daemon, PeerNode(daemon.channel, config))
                tensor.register(server, daemon)
                collective.register(server, daemon)
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                self.servers.append(server)
                self.daemons.append(daemon)
                self.addresses.append(f"127.0.0.1:{port}")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        for daemon in self.daemons:
            await node_for(daemon).close()
        for server in self.servers:
            await server.stop(None)
