"""Finding devices for the controller: mDNS plus a static peer list asked directly over mutual TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pac.discovery.mdns import browse
from pac.discovery.records import DeviceRecord, parse_peer
from pac.net.daemon_client import DaemonClient, DaemonError
from pac.security import Identity


async def ask_peer(text: str, identity: Identity | None) -> DeviceRecord | str:
    """GetInfo from a static peer; a line saying why on failure."""
    try:
        host, port = parse_peer(text)
    except ValueError as error:
        return str(error)
    try:
        async with DaemonClient(f"{host}:{port}", identity) as client:
            return await client.record(host, port, "static")
    except DaemonError as error:
        return str(error)


async def find_devices(identity: Identity | None, timeout_s: float = 2.0, interfaces: Sequence[str] = (),
                       peers: Sequence[str] = (), mdns: bool = True) -> tuple[list[DeviceRecord], list[str]]:
    """Every device found, and a line for each problem (malformed advertisement, unreachable peer)."""
    lookups = [ask_peer(p, identity) for p in peers]
    if mdns:
        (found, problems), *asked = await asyncio.gather(browse(timeout_s, interfaces), *lookups)
    else:
        found, problems, asked = [], [], await asyncio.gather(*lookups)
    records = list(found) + [a for a in asked if isinstance(a, DeviceRecord)]
    return records, list(problems) + [a for a in asked if isinstance(a, str)]
