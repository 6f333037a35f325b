"""What a daemon advertises, and how the controller sorts what it finds (pure: no sockets)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

from pac.security import CLUSTER_ID_RE, NODE_ID_RE

SERVICE_TYPE = "_pacd._tcp.local."
API_VERSION = "v1"
MAX_TXT_VALUE = 200  # one TXT string is at most 255 bytes including the key


@dataclass(frozen=True)
class DeviceRecord:
    """One daemon as seen on the network (mDNS) or asked directly (static list)."""

    node_id: str
    cluster_id: str  # empty while unpaired
    host: str
    port: int
    api_version: str = API_VERSION
    memory_budget_bytes: int = 0
    accelerator: str = "cpu"
    hostname: str = ""
    source: str = "mdns"  # "mdns", "static" (a --peer or a listed address) or "remembered"
    revocation_number: int = 0  # the home's revocation list the device holds (asked directly; 0: none, unknown)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def paired(self) -> bool:
        return bool(self.cluster_id)


def instance_name(record: DeviceRecord) -> str:
    """Node id, host name and port: stable for a device, and distinct for a copy of its state directory
    running elsewhere, so both stay visible and the controller can report the duplicate."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", record.hostname)[:24] or "host"
    return f"pacd-{record.node_id}-{host}-{record.port}.{SERVICE_TYPE}"


def to_txt(record: DeviceRecord) -> dict[str, str]:
    return {"node": record.node_id, "cluster": record.cluster_id, "api": record.api_version,
            "mem": str(record.memory_budget_bytes), "accel": record.accelerator[:MAX_TXT_VALUE],
            "host": record.hostname[:MAX_TXT_VALUE]}


def from_txt(properties: dict[bytes, bytes | None], host: str, port: int) -> DeviceRecord:
    """Read TXT records; ValueError names the first field that is missing or malformed."""
    txt = {k.decode(errors="replace"): (v or b"").decode(errors="replace") for k, v in properties.items()}
    node, cluster = txt.get("node", ""), txt.get("cluster", "")
    if not NODE_ID_RE.match(node):
        raise ValueError(f"TXT 'node' is not a node id: {node!r}")
    if cluster and not CLUSTER_ID_RE.match(cluster):
        raise ValueError(f"TXT 'cluster' is not a cluster id: {cluster!r}")
    if not txt.get("mem", "0").isdigit():
        raise ValueError(f"TXT 'mem' is not a byte count: {txt.get('mem')!r}")
    return DeviceRecord(node, cluster, host, port, txt.get("api", ""), int(txt.get("mem", "0")),
                        txt.get("accel", ""), txt.get("host", ""), "mdns")


def parse_peer(text: str, default_port: int = 7443) -> tuple[str, int]:
    """"host", "host:port" or "[v6]:port" -> (host, port); ValueError says what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or str(default_port)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, str(default_port)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"peer {text!r} is not host:port (port 1..65535)")
    return host, int(port_text)


@dataclass
class Survey:
    """Devices found, kept apart by what the controller can do with them."""

    ours: list[DeviceRecord] = field(default_factory=list)  # this cluster, unique node id
    unpaired: list[DeviceRecord] = field(default_factory=list)  # can be paired with `pacctl pair`
    other_clusters: list[DeviceRecord] = field(default_factory=list)  # another home's devices
    duplicates: dict[str, list[DeviceRecord]] = field(default_factory=dict)  # one node id, many addresses
    revoked: list[DeviceRecord] = field(default_factory=list)  # this cluster's, unpaired by the home: not used


def survey(records: list[DeviceRecord], cluster_id: str, revoked: Collection[str] = ()) -> Survey:
    """Sort records: the same daemon seen twice at one address counts once; one id at two places is a
    duplicate (a copied state directory) and is kept out of `ours` until resolved."""
    by_node: dict[str, dict[str, DeviceRecord]] = defaultdict(dict)
    for record in records:
        by_node[record.node_id].setdefault(record.address, record)
    result = Survey()
    for node_id, places in sorted(by_node.items()):
        found = list(places.values())
        if len(found) > 1:
            result.duplicates[node_id] = found
        elif not found[0].paired:
            result.unpaired.append(found[0])
        elif found[0].cluster_id == cluster_id:
            (result.revoked if node_id in revoked else result.ours).append(found[0])
        else:
            result.other_clusters.append(found[0])
    return result
