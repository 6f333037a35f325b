"""The daemon's side of pairing: its one-time code, attempt limit, and checking the controller's proof."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pac.security import authority, pairing
from pac.security.files import write_private
from pac.security.identity import Identity, ensure_key, self_signed_pair, store_identity
from pacd.rpc import InvalidRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Offer:
    csr_pem: bytes
    salt: bytes


class WrongCode(PermissionError):
    pass


class PairingSession:
    """Holds the current code; after MAX_ATTEMPTS wrong proofs it draws (and prints) a new one."""

    def __init__(self, state_root: Path, node_id: str, out: Callable[[str], None]):
        self._root, self._node_id, self._out = state_root, node_id, out
        self._new_code()
        key = authority.load_key(ensure_key(state_root))
        self._csr_pem = authority.make_csr(key, node_id).public_bytes(serialization.Encoding.PEM)

    def _new_code(self) -> None:
        self._code, self._salt, self._failures = pairing.new_code(), os.urandom(16), 0
        self._key: bytes | None = None
        write_private(self._root / "pairing-code", (self._code + "\n").encode())

    def show_code(self) -> None:
        self._out(f"pacd pairing code: {self._code} (node {self._node_id})")
        log.warning("not paired: pairing code %s; on the controller run 'pacctl pair HOST:PORT'", self._code)

    def offer(self) -> Offer:
        return Offer(self._csr_pem, self._salt)

    def _derived_key(self) -> bytes:
        if self._key is None:
            self._key = pairing.derive_key(self._code, self._salt)
        return self._key

    def complete(self, cluster_id: str, cert_pem: bytes, ca_pem: bytes, proof: bytes) -> tuple[Identity, bytes]:
        """Check the controller's proof and keep the certificate; returns (identity, daemon's proof)."""
        _, served_cert = self_signed_pair(self._root, self._node_id)
        digest = pairing.transcript(salt=self._salt, node_id=self._node_id, csr_pem=self._csr_pem,
                                    server_cert_pem=served_cert, cluster_id=cluster_id,
                                    certificate_pem=cert_pem, ca_certificate_pem=ca_pem)
        if not pairing.check(self._derived_key(), "controller", digest, proof):
            self._failures += 1
            left = pairing.MAX_ATTEMPTS - self._failures
            if left <= 0:
                self._new_code()
                self.show_code()
                raise WrongCode("wrong pairing code; too many attempts, the device shows a new code")
            raise WrongCode(f"wrong pairing code ({left} attempts left before the device draws a new one)")
        self._check_certificate(cluster_id, cert_pem, ca_pem)
        identity = store_identity(self._root, cert_pem, ca_pem)
        (self._root / "pairing-code").unlink(missing_ok=True)
        return identity, pairing.proof(self._derived_key(), "daemon", digest)

    def _check_certificate(self, cluster_id: str, cert_pem: bytes, ca_pem: bytes) -> None:
        try:
            who = authority.describe(x509.load_pem_x509_certificate(cert_pem))
            ca_who = authority.describe(x509.load_pem_x509_certificate(ca_pem))
        except ValueError as error:
            raise InvalidRequest(f"certificate_pem or ca_certificate_pem is not a PEM certificate: {error}") \
                from error
        if who.node_id != self._node_id or who.role != "device":
            raise InvalidRequest(f"the certificate names node {who.node_id!r} as {who.role!r}, "
                                 f"not this device {self._node_id}")
        if who.cluster_id != cluster_id or ca_who.cluster_id != cluster_id:
            raise InvalidRequest("cluster_id does not match the certificate and its authority")
