"""The devices this home has paired, remembered by the controller: node id, last address, certificate.

`<home>/devices.json` (owner-only) is written by `pacctl pair` and read by every command that looks for
devices (`devices`, `profile`, `train`, `deploy`, `ask`, ...): each remembered address is asked
directly besides mDNS, so a network where multicast does not pass needs `--peer` once, at pairing. mDNS
still wins: a remembered device found there at another address has its address updated. `pacctl unpair`
forgets a device and revokes its certificate (pac.security.revocation).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pac.errors import PacError
from pac.security.files import write_private

FORMAT = 1


@dataclass
class KnownDevice:
    node_id: str
    address: str  # host:port, as last seen (paired at, or found by mDNS)
    hostname: str = ""
    serial: int = 0  # of the certificate this home issued it at pairing (0: not known)
    paired_unix: float = 0.0
    seen_unix: float = 0.0
    earlier_serials: list[int] = field(default_factory=list)  # certificates `pacctl renew` replaced (still valid)


def _path(home: Path) -> Path:
    return home / "devices.json"


def load_known(home: Path) -> dict[str, KnownDevice]:
    """Node id -> what this home remembers of it ({} before the first pairing)."""
    path = _path(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {n: KnownDevice(**entry) for n, entry in data["devices"].items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PacError(f"{path}: not a list of remembered devices ({error}); remove it and pair again") from None


def save_known(home: Path, known: dict[str, KnownDevice]) -> None:
    data = {"format": FORMAT, "devices": {n: asdict(d) for n, d in sorted(known.items())}}
    write_private(_path(home), (json.dumps(data, indent=1) + "\n").encode())


def remember(home: Path, node_id: str, address: str, hostname: str = "", serial: int = 0) -> None:
    known = load_known(home)
    now = time.time()
    known[node_id] = KnownDevice(node_id, address, hostname, serial, now, now)
    save_known(home, known)


def forget(home: Path, node_id: str) -> KnownDevice | None:
    known = load_known(home)
    gone = known.pop(node_id, None)
    if gone is not None:
        save_known(home, known)
    return gone


def seen(home: Path, records) -> None:
    """Remembered devices among `records` (this home's, DeviceRecord): their newest address."""
    known = load_known(home)
    changed = False
    for record in records:
        entry = known.get(record.node_id)
        if entry is not None and (entry.address != record.address or not entry.hostname):
            entry.address, entry.hostname, entry.seen_unix = record.address, record.hostname, time.time()
            changed = True
    if changed:
        save_known(home, known)


def resolve(known: dict[str, KnownDevice], wanted: str) -> KnownDevice | None:
    """The remembered device `wanted` names: its node id (or a unique prefix of it), host name or address."""
    exact = [d for d in known.values() if wanted in (d.node_id, d.hostname, d.address)]
    if exact:
        return exact[0] if len(exact) == 1 else None
    prefixed = [d for d in known.values() if d.node_id.startswith(wanted)]
    return prefixed[0] if len(prefixed) == 1 else None
