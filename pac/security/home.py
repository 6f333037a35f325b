"""The controller's home directory: the cluster authority and the controller's own identity.

Layout (all owner-only): `<home>/ca/{key.pem,ca.pem}` (the authority; its key signs devices at
pairing), `<home>/tls/` (the controller's identity, as for any node; see identity.py) and
`<home>/clients/<name>/tls/` (home-automation clients' identities, `pacctl client add`).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from cryptography import x509

from pac.errors import PacError
from pac.security import authority
from pac.security.files import check_private, ensure_private_dir, write_private
from pac.security.identity import Identity, NotPairedError, ensure_key, load_identity, store_identity


class HomeError(PacError):
    """The controller's home is missing or already initialised."""


def default_home() -> Path:
    if os.environ.get("PAC_HOME"):
        return Path(os.environ["PAC_HOME"])
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "pac"


def init_home(home: Path, force: bool = False) -> Identity:
    """Create a new cluster: its authority and a controller certificate signed by it."""
    if (home / "ca" / "key.pem").exists() and not force:
        raise HomeError(f"{home} already holds a cluster authority; use --force to replace it "
                        "(every paired device must then be paired again)")
    ensure_private_dir(home)
    cluster_id = secrets.token_hex(8)
    ca_key, ca_cert = authority.create_authority(cluster_id)
    write_private(home / "ca" / "key.pem", authority.key_pem(ca_key))
    write_private(home / "ca" / "ca.pem", authority.cert_pem(ca_cert))
    for stale in ("cert.pem", "ca.pem", "key.pem"):
        (home / "tls" / stale).unlink(missing_ok=True)
    key = authority.load_key(ensure_key(home))
    csr = authority.make_csr(key, secrets.token_hex(8))
    cert = authority.issue(ca_key, ca_cert, csr, cluster_id, "controller")
    return store_identity(home, authority.cert_pem(cert), authority.cert_pem(ca_cert))


def load_authority(home: Path):
    """(CA key, CA certificate, cluster id) of the controller's cluster."""
    key_path = home / "ca" / "key.pem"
    if not key_path.exists():
        raise HomeError(f"no cluster authority in {home}: run 'pacctl init' first")
    check_private(key_path)
    ca_cert = x509.load_pem_x509_certificate((home / "ca" / "ca.pem").read_bytes())
    return authority.load_key(key_path.read_bytes()), ca_cert, authority.describe(ca_cert).cluster_id


def controller_identity(home: Path) -> Identity:
    if not (home / "ca" / "key.pem").exists():
        raise HomeError(f"no cluster in {home}: run 'pacctl init' first (or set PAC_HOME / --home)")
    return load_identity(home)


CLIENT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def clients_dir(home: Path) -> Path:
    return home / "clients"


def add_client(home: Path, name: str, role: str = "assistant") -> Identity:
    """A certificate of `role` for a client (a home-automation system) named `name`, kept owner-only in
    `home/clients/<name>/tls/` (key.pem, cert.pem, ca.pem): what that client presents to the daemons."""
    if not CLIENT_NAME_RE.match(name):
        raise HomeError(f"client name must be lowercase letters, digits and dashes (at most 63), got {name!r}")
    where = clients_dir(home) / name
    if where.exists():
        raise HomeError(f"a client named {name!r} exists already ({where}); remove it first (pacctl client remove)")
    ca_key, ca_cert, cluster_id = load_authority(home)
    ensure_private_dir(where)
    key = authority.load_key(ensure_key(where))
    cert = authority.issue(ca_key, ca_cert, authority.make_csr(key, secrets.token_hex(8)), cluster_id, role)
    return store_identity(where, authority.cert_pem(cert), authority.cert_pem(ca_cert))


def list_clients(home: Path) -> list[tuple[str, Identity]]:
    found = []
    for where in sorted(clients_dir(home).glob("*")) if clients_dir(home).is_dir() else ():
        try:
            found.append((where.name, load_identity(where)))
        except (OSError, ValueError, NotPairedError):
            continue
    return found
