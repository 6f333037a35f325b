"""mDNS advertising and browsing with zeroconf (the I/O half of discovery)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from pac.discovery.records import SERVICE_TYPE, DeviceRecord, from_txt, instance_name, to_txt

log = logging.getLogger(__name__)


def _zeroconf(interfaces: Sequence[str]) -> AsyncZeroconf:
    if interfaces:
        return AsyncZeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
    return AsyncZeroconf(ip_version=IPVersion.V4Only)


def _local_addresses(interfaces: Sequence[str]) -> list[bytes]:
    if interfaces:
        return [socket.inet_aton(a) for a in interfaces]
    import psutil

    found = [a.address for nics in psutil.net_if_addrs().values() for a in nics
             if a.family == socket.AF_INET and not a.address.startswith("127.")]
    return [socket.inet_aton(a) for a in (found or ["127.0.0.1"])]


WYOMING_TYPE = "_wyoming._tcp.local."  # what Home Assistant's Wyoming integration browses for


class Advertiser:
    """Registers one daemon as `_pacd._tcp.local.` (and, serving Wyoming, as `_wyoming._tcp.local.`);
    `close()` unregisters them (goodbye packets)."""

    def __init__(self, interfaces: Sequence[str] = ()):
        self._interfaces = tuple(interfaces)
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    def _info_for(self, record: DeviceRecord, host: str | None) -> AsyncServiceInfo:
        addresses = [socket.inet_aton(host)] if host else _local_addresses(self._interfaces)
        return AsyncServiceInfo(SERVICE_TYPE, instance_name(record), port=record.port,
                                properties=to_txt(record), addresses=addresses,
                                server=f"pacd-{record.node_id}.local.")

    async def start(self, record: DeviceRecord, host: str | None = None) -> None:
        self._zc = _zeroconf(self._interfaces)
        self._info = self._info_for(record, host)
        wanted = self._info.name
        await self._zc.async_register_service(self._info, allow_name_change=True)
        if self._info.name != wanted:  # someone else advertises our node id: a copied state directory
            log.warning("another device already advertises node %s; advertising as %r so the controller "
                        "can report the duplicate", record.node_id, self._info.name)
        log.info("advertising %s on mDNS", self._info.name)

    async def update(self, record: DeviceRecord, host: str | None = None) -> None:
        if self._zc is None:
            return await self.start(record, host)
        name = self._info.name if self._info else None
        self._info = self._info_for(record, host)
        if name:
            self._info.name = name  # keep a name changed to settle a conflict
        await self._zc.async_update_service(self._info)

    async def add_wyoming(self, record: DeviceRecord, port: int, host: str | None = None) -> str:
        """Advertise the daemon's Wyoming server (after `start` or `update`); the name it got."""
        addresses = [socket.inet_aton(host)] if host else _local_addresses(self._interfaces)
        info = AsyncServiceInfo(WYOMING_TYPE, f"pac-{record.node_id[:12]}.{WYOMING_TYPE}", port=port,
                                addresses=addresses, server=f"pacd-{record.node_id}.local.")
        await self._zc.async_register_service(info, allow_name_change=True)
        log.info("advertising %s on mDNS (Wyoming)", info.name)
        return info.name

    async def close(self) -> None:
        if self._zc is None:
            return
        try:
            await self._zc.async_unregister_all_services()
        finally:
            await self._zc.async_close()
            self._zc = None
            log.info("mDNS registration withdrawn")


async def browse(timeout_s: float = 2.0, interfaces: Sequence[str] = ()) -> tuple[list[DeviceRecord], list[str]]:
    """Devices answering on mDNS within `timeout_s`, and a line for each malformed advertisement."""
    zc = _zeroconf(interfaces)
    names: set[str] = set()

    def on_change(zeroconf, service_type, name, state_change) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)

    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        await asyncio.sleep(timeout_s)
        results = await asyncio.gather(*(_resolve(zc, name) for name in sorted(names)))
    finally:
        await browser.async_cancel()
        await zc.async_close()
    records = [r for r in results if isinstance(r, DeviceRecord)]
    problems = [r for r in results if isinstance(r, str)]
    return records, problems


async def _resolve(zc: AsyncZeroconf, name: str) -> DeviceRecord | str | None:
    info = AsyncServiceInfo(SERVICE_TYPE, name)
    if not await info.async_request(zc.zeroconf, 1500):
        return None
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses or not info.port:
        return f"{name}: advertisement without address or port"
    try:
        return from_txt(info.properties, addresses[0], info.port)
    except ValueError as error:
        return f"{name}: {error}"
