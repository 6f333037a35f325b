"""Certificate revocation: an X.509 CRL signed by the home's authority, kept by the controller and every
daemon.

`pacctl unpair DEVICE` adds the device's certificate (its serial number) to `<home>/ca/crl.pem`, with the
CRL number one higher, and sends the list to every device it reaches (`Device.UpdateRevocations`); every
later command that reaches devices sends it again to those holding an older one. A daemon checks the
list's signature against its authority, keeps the newest in `STATE_DIR/tls/crl.pem`, and refuses every
call made with a revoked certificate (`UNAUTHENTICATED`, pacd/auth.py). `<home>/ca/revoked.json` names
the revoked devices so the controller lists them apart and never uses them.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from pac.errors import PacError
from pac.security.files import write_private

CRL_DAYS = 3650  # a CRL's next-update; daemons keep the newest whatever its date


class CertificateRefused(PacError):
    """A device does not take what it was handed: a revocation list or a renewed certificate."""


class RevocationError(CertificateRefused):
    """A revocation list that is not this home's, or is older than the one held."""


@dataclass
class Revocations:
    number: int = 0  # the CRL number (0: none)
    serials: frozenset[int] = frozenset()
    pem: bytes = b""
    nodes: dict[str, int] = field(default_factory=dict)  # controller side: revoked node id -> serial

    def revoked(self, certificate: x509.Certificate) -> bool:
        return certificate.serial_number in self.serials


def read_crl(pem: bytes, ca_cert: x509.Certificate) -> Revocations:
    """The revocations in `pem`, checked to be signed by `ca_cert`."""
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as error:
        raise RevocationError(f"not a certificate revocation list ({error})") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):
        raise RevocationError("the revocation list is not signed by this home's authority")
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return Revocations(number, frozenset(r.serial_number for r in crl), pem)


def load_revocations(home: Path) -> Revocations:
    """The controller's list ({} before the first `pacctl unpair`)."""
    crl, names = home / "ca" / "crl.pem", home / "ca" / "revoked.json"
    if not crl.exists():
        return Revocations()
    ca_cert = x509.load_pem_x509_certificate((home / "ca" / "ca.pem").read_bytes())
    found = read_crl(crl.read_bytes(), ca_cert)
    found.nodes = json.loads(names.read_text()) if names.exists() else {}
    return found


def revoke(home: Path, ca_key, ca_cert: x509.Certificate, node_id: str, serial: int,
           earlier: tuple[int, ...] = ()) -> Revocations:
    """Add `serial` (device `node_id`'s certificate) and the `earlier` certificates it was issued (renewed
    ones, valid until they expire) to the home's list; returns the new list."""
    held = load_revocations(home)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject).last_update(now)
               .next_update(now + datetime.timedelta(days=CRL_DAYS))
               .add_extension(x509.CRLNumber(held.number + 1), critical=False))
    for number in sorted(held.serials | {serial, *earlier}):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(number).revocation_date(now).build())
    pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(_pem())
    nodes = {**held.nodes, node_id: serial}
    write_private(home / "ca" / "crl.pem", pem)
    write_private(home / "ca" / "revoked.json", (json.dumps(nodes, indent=1) + "\n").encode())
    found = read_crl(pem, ca_cert)
    found.nodes = nodes
    return found


def _pem():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM
