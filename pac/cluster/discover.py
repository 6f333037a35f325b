"""Finding devices for the controller: mDNS, a static peer list and the devices this home remembers
(pac.discovery.known), the last two asked directly over mutual TLS."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from pac.discovery.mdns import browse
from pac.discovery.records import DeviceRecord, Survey, parse_peer, survey
from pac.net.daemon_client import DaemonClient, DaemonError
from pac.security import Identity


async def ask_peer(text: str, identity: Identity | None, source: str = "static") -> DeviceRecord | str:
    """GetInfo from a static peer; a line saying why on failure."""
    try:
        host, port = parse_peer(text)
    except ValueError as error:
        return str(error)
    try:
        async with DaemonClient(f"{host}:{port}", identity) as client:
            return await client.record(host, port, source)
    except DaemonError as error:
        return str(error)


async def find_devices(identity: Identity | None, timeout_s: float = 2.0, interfaces: Sequence[str] = (),
                       peers: Sequence[str] = (), mdns: bool = True,
                       known: Mapping[str, str] | None = None) -> tuple[list[DeviceRecord], list[str]]:
    """Every device found, and a line for each problem (malformed advertisement, unreachable peer).
    `known`: remembered node id -> last address, asked too; a remembered device found by mDNS or among
    the peers is taken from there (its remembered address's answer, or silence, is dropped)."""
    remembered = {n: a for n, a in (known or {}).items() if a not in peers}
    lookups = [ask_peer(p, identity) for p in peers]
    recalls = [ask_peer(a, identity, "remembered") for a in remembered.values()]
    if mdns:
        (found, problems), *asked = await asyncio.gather(browse(timeout_s, interfaces), *lookups, *recalls)
    else:
        found, problems, asked = [], [], await asyncio.gather(*lookups, *recalls)
    asked, recalled = asked[:len(lookups)], asked[len(lookups):]
    records = list(found) + [a for a in asked if isinstance(a, DeviceRecord)]
    problems = list(problems) + [a for a in asked if isinstance(a, str)]
    have = {r.node_id for r in records}
    for node, result in zip(remembered, recalled, strict=True):
        if node in have:
            continue
        if isinstance(result, DeviceRecord):
            records.append(dataclasses.replace(result, source="remembered") if result.node_id == node else result)
        else:
            problems.append(f"remembered device {node} does not answer: {result}")
    return records, problems


async def find_home(home: Path, identity: Identity | None, timeout_s: float = 2.0, interfaces: Sequence[str] = (),
                    peers: Sequence[str] = (), mdns: bool = True, remembered: bool = True) -> tuple[Survey, list[str]]:
    """This home's view of the devices: mDNS, `peers` and the remembered devices (secure homes, unless not
    `remembered`), sorted
    (`survey`, the revoked ones apart); remembered addresses updated from what answered; the home's
    revocation list sent to every device of it that holds an older one."""
    from pac.discovery.known import load_known, seen
    from pac.security.revocation import load_revocations

    known = {n: d.address for n, d in load_known(home).items()} if identity is not None and remembered else {}
    records, problems = await find_devices(identity, timeout_s, interfaces, peers, mdns, known)
    revocations = load_revocations(home) if identity is not None else None
    found = survey(records, identity.cluster_id if identity else "", revocations.nodes if revocations else ())
    if identity is not None:
        seen(home, found.ours)
        if revocations.number:
            problems += await send_revocations(identity, revocations, found.ours)
    return found, problems


async def send_revocations(identity: Identity, revocations, records: Sequence[DeviceRecord]) -> list[str]:
    """The home's revocation list to each of `records` holding an older one; a line per failure."""
    async def one(record: DeviceRecord) -> str | None:
        try:
            async with DaemonClient(record.address, identity, record.node_id) as client:
                await client.update_revocations(revocations.pem)
        except DaemonError as error:
            return f"sending the revocation list: {error}"
        return None

    results = await asyncio.gather(*(one(r) for r in records if r.revocation_number < revocations.number))
    return [r for r in results if r]
