"""The emulated home network: namespaces, shaped links, AllReduce across them, and full cleanup."""

import asyncio
import subprocess
import time

import pytest
import torch

from bench.netns import NAME_PREFIX, EmulatedNetwork, unavailable

pytestmark = [pytest.mark.netns, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]


def _leftovers() -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line for line in (namespaces + links).splitlines() if NAME_PREFIX in line and "-t" in line]


def test_daemons_in_namespaces_allreduce_over_shaped_links_and_everything_is_removed():
    from bench.devserver import DevCluster
    from pac.collective import RingGroup
    from pac.net.convert.collective import group_to_proto
    from pac.v1 import collective_pb2, collective_pb2_grpc

    tag = f"t{time.monotonic_ns() % 10000}"
    with EmulatedNetwork(3, rate="200mbit", tag=tag) as net:
        assert net.hosts == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
        with DevCluster(3, hosts=net.hosts, prefixes=[net.prefix(i) for i in range(3)]) as cluster:
            members = tuple(cluster.addresses)
            numel = 2 * 1024 * 1024  # 8 MiB: at 200 Mbit/s the ring needs >= 0.45 s

            async def scenario():
                channels = [cluster.channel(a) for a in members]
                try:
                    return await asyncio.gather(*[
                        collective_pb2_grpc.CollectiveStub(c).AllReduce(collective_pb2.AllReduceRequest(
                            group=group_to_proto(RingGroup("net", r, members, 30.0)), op_id=1, iterations=2,
                            synthetic=collective_pb2.SyntheticTensors(numel=numel, dtype="float32", seed=1)))
                        for r, c in enumerate(channels)])
                finally:
                    for channel in channels:
                        await channel.close()

            replies = asyncio.run(scenario())
        expected = sum(float(torch.randn(numel, generator=torch.Generator().manual_seed(1 + r)).double().sum())
                       for r in range(3))
        assert all(abs(reply.checksum - expected) < 1e-2 * max(1.0, abs(expected)) for reply in replies)
        bound = 2 * 2 / 3 * numel * 4 / (200e6 / 8)
        assert min(max(r.seconds[i] for r in replies) for i in range(2)) >= 0.9 * bound  # the shaping holds
    assert not [line for line in _leftovers() if tag in line]


def test_the_network_is_removed_after_a_failure():
    tag = f"f{time.monotonic_ns() % 10000}"
    with pytest.raises(RuntimeError, match="boom"):
        with EmulatedNetwork(2, tag=tag):
            raise RuntimeError("boom")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tag not in names
