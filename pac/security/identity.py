"""A node's TLS identity on disk, and the gRPC credentials built from it.

Layout of `<dir>/tls/` (a daemon's state directory, or the controller's home), all owner-only:

    key.pem    the node's private key (0600), made once, never leaves the device
    self.pem   self-signed certificate served while the device is not yet paired
    cert.pem   certificate issued by the cluster authority at pairing
    ca.pem     the cluster authority's certificate: the only root this node trusts
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

import pac.security.authority as authority
from pac.errors import PacError
from pac.security.files import check_private, ensure_private_dir, write_private


class NotPairedError(PacError):
    """This node has no certificate of a cluster yet."""


@dataclass(frozen=True)
class Identity:
    """Everything needed to speak mutual TLS as one node of one cluster."""

    node_id: str
    cluster_id: str
    role: str  # "device", "controller" or "assistant"
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    directory: Path  # the tls/ directory the files live in

    @property
    def key_path(self) -> Path:
        return self.directory / "key.pem"

    @property
    def cert_path(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"


def tls_dir(base: Path) -> Path:
    return Path(base) / "tls"


def ensure_key(base: Path) -> bytes:
    """The node's private key, created (0600) on first use."""
    path = tls_dir(base) / "key.pem"
    if not path.exists():
        write_private(path, authority.key_pem(authority.new_key()))
    check_private(path)
    return path.read_bytes()


def is_paired(base: Path) -> bool:
    d = tls_dir(base)
    return (d / "cert.pem").exists() and (d / "ca.pem").exists()


def load_identity(base: Path) -> Identity:
    """Load the paired identity under `base`, or raise NotPairedError naming what is missing."""
    d = tls_dir(base)
    if not is_paired(base):
        raise NotPairedError(f"{d} holds no cluster certificate: pair this node first (pacctl pair)")
    key = ensure_key(base)
    cert_bytes, ca_bytes = (d / "cert.pem").read_bytes(), (d / "ca.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(cert_bytes)
    who = authority.describe(cert)
    return Identity(who.node_id, who.cluster_id, who.role, key, cert_bytes, ca_bytes, d)


def store_identity(base: Path, cert_pem: bytes, ca_pem: bytes) -> Identity:
    """Keep a certificate issued at pairing (after checking it matches our key and the authority)."""
    key = authority.load_key(ensure_key(base))
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    authority.verify_issued(cert, ca)
    if not authority.same_public_key(cert.public_key(), key.public_key()):
        raise ValueError("the issued certificate is not for this node's key")
    d = ensure_private_dir(tls_dir(base))
    write_private(d / "ca.pem", ca_pem)
    write_private(d / "cert.pem", cert_pem)
    return load_identity(base)


def self_signed_pair(base: Path, node_id: str) -> tuple[bytes, bytes]:
    """(key, self-signed certificate) PEMs for serving while unpaired; the certificate is made once."""
    key_bytes = ensure_key(base)
    path = tls_dir(base) / "self.pem"
    if not path.exists():
        write_private(path, authority.cert_pem(authority.self_signed(authority.load_key(key_bytes), node_id)))
    return key_bytes, path.read_bytes()


def server_credentials(state_dir: Path) -> grpc.ServerCredentials:
    """Mutual TLS for a daemon's server: clients must present a certificate of this cluster."""
    me = load_identity(state_dir)
    return grpc.ssl_server_credentials([(me.key_pem, me.cert_pem)], root_certificates=me.ca_pem,
                                       require_client_auth=True)


def channel_credentials(state_dir: Path) -> grpc.ChannelCredentials:
    """Mutual TLS for a client: trusts only this cluster's authority and presents our certificate."""
    me = load_identity(state_dir)
    return identity_channel_credentials(me)


def identity_channel_credentials(me: Identity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=me.ca_pem, private_key=me.key_pem,
                                        certificate_chain=me.cert_pem)
