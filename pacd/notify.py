"""sd_notify(3) without dependencies: tell systemd we are READY or STOPPING.

Does nothing when NOTIFY_SOCKET is unset (not started by systemd with Type=notify). A name starting with
"@" is an abstract socket.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str, environ: dict[str, str] | None = None) -> bool:
    """Send `states` (like "READY=1", "STATUS=serving") to systemd; True if a message was sent."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock and other address families are not used for a local service
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(states).encode())
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))


def stopping(status: str = "") -> bool:
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
