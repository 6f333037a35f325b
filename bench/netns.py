"""An emulated home network: each daemon in its own network namespace, links shaped by tc.

    with EmulatedNetwork(4, rate="1gbit", latency="0.5ms") as net:
        net.hosts            # ["10.77.0.1", ... ]: one address per namespace
        net.prefix(i)        # ["ip", "netns", "exec", NAME]: run a command inside namespace i

Layout: namespaces pacN<tag>-<i>, each with one veth pair to a bridge in the root namespace; addresses
from 10.77.0.0/24 exist only on those veths and the bridge (10.77.0.254, for the controller), so traffic
to them can only reach namespaces made here. Every link is shaped in both directions (egress of the
namespace end and of the bridge end) with tbf at `rate`; with `latency`, netem adds half of it on each end
where the kernel has sch_netem (`latency_emulated` says whether it did). Everything is removed on exit,
also after a failure, and by `python -m bench.netns --cleanup` after a crash.

Needs root and iproute2 (`ip`, `tc`); `unavailable()` says why not, so tests can skip with the reason.
Script form: `python -m bench.netns --nodes 4 --rate 1gbit -- CMD` runs CMD in the root namespace while
the network exists (docs/network.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

SUBNET = "10.77.0"
BRIDGE_ADDRESS = f"{SUBNET}.254"
NAME_PREFIX = "pacN"


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"needs iproute2 ('{tool}' not found; apt-get install iproute2)"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _has_netem() -> bool:
    probe = f"{NAME_PREFIX}probe"
    _run("ip", "link", "add", probe, "type", "dummy", check=False)
    try:
        return _run("tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms", check=False).returncode == 0
    finally:
        _run("ip", "link", "del", probe, check=False)


class EmulatedNetwork:
    def __init__(self, nodes: int, rate: str = "1gbit", latency: str | None = None, tag: str | None = None):
        if not 1 <= nodes <= 32:
            raise ValueError("nodes must be 1..32")
        self.nodes, self.rate, self.latency = nodes, rate, latency
        self.tag = tag or str(os.getpid() % 100000)
        self.bridge = f"{NAME_PREFIX}b{self.tag}"
        self.namespaces = [f"{NAME_PREFIX}{self.tag}-{i}" for i in range(nodes)]
        self.hosts = [f"{SUBNET}.{i + 1}" for i in range(nodes)]
        self.devices = [f"{NAME_PREFIX}{self.tag}i{i}" for i in range(nodes)]  # each namespace's interface
        self.latency_emulated = False

    def prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[index]]

    def outer(self, index: int) -> str:
        """The root-namespace end of namespace `index`'s link (down: the namespace is cut off)."""
        return f"{NAME_PREFIX}{self.tag}o{index}"

    def __enter__(self) -> EmulatedNetwork:
        reason = unavailable()
        if reason:
            raise RuntimeError(f"emulated network: {reason}")
        try:
            self._build()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _shape(self, device: str, netns: str | None) -> None:
        exec_prefix = ["ip", "netns", "exec", netns] if netns else []
        tbf = ["tbf", "rate", self.rate, "burst", "256kb", "latency", "20ms"]
        if self.latency_emulated:
            half = f"{_microseconds(self.latency) / 2:.0f}us"
            _run(*exec_prefix, "tc", "qdisc", "add", "dev", device, "root", "handle", "1:", "netem", "delay", half)
            _run(*exec_prefix, "tc", "qdisc", "add", "dev", device, "parent", "1:1", "handle", "10:", *tbf)
        else:
            _run(*exec_prefix, "tc", "qdisc", "add", "dev", device, "root", *tbf)

    def _build(self) -> None:
        self.latency_emulated = bool(self.latency) and _has_netem()
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for index, (netns, host) in enumerate(zip(self.namespaces, self.hosts, strict=True)):
            outer, inner = self.outer(index), f"{NAME_PREFIX}{self.tag}i{index}"
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", netns)
            _run("ip", "link", "set", outer, "master", self.bridge)
            _run("ip", "link", "set", outer, "up")
            _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
            _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{host}/24", "dev", inner)
            _run("ip", "netns", "exec", netns, "ip", "link", "set", inner, "up")
            self._shape(outer, None)
            self._shape(inner, netns)

    def remove(self) -> None:
        for netns in self.namespaces:
            _run("ip", "netns", "del", netns, check=False)  # takes its veth pair with it
        _run("ip", "link", "del", self.bridge, check=False)


def _microseconds(text: str) -> float:
    units = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text) * 1000.0


def cleanup_all() -> int:
    """Remove every namespace and bridge this module ever made (after a crash); returns how many."""
    removed = 0
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(NAME_PREFIX):
            _run("ip", "netns", "del", name, check=False)
            removed += 1
    for line in _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(NAME_PREFIX):
            _run("ip", "link", "del", name, check=False)
            removed += 1
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netns", description="Emulated home network.")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rate", default="1gbit", help="tc rate of every link, each direction")
    parser.add_argument("--latency", default=None, help="one-way latency, e.g. 0.5ms (needs sch_netem)")
    parser.add_argument("--cleanup", action="store_true", help="remove leftovers of earlier runs and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD: run while the network exists")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"bench.netns: {reason}", file=sys.stderr)
        return 2
    if args.cleanup:
        print(f"removed {cleanup_all()} leftovers")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with EmulatedNetwork(args.nodes, args.rate, args.latency) as net:
        print(f"namespaces {' '.join(net.namespaces)}; hosts {' '.join(net.hosts)}; bridge {BRIDGE_ADDRESS}; "
              f"latency {'emulated' if net.latency_emulated else 'not emulated'}", flush=True)
        if command:
            return subprocess.call(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
