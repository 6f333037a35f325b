"""The home cluster's certificate authority and the certificates it issues (pure crypto, no files).

Names: a node's certificate has subject CN = node id, O = "pac cluster <cluster id>", OU = role, and the
DNS names `<node id>.node.pac` and `node.pac`; clients pass one of these as the TLS target name, so a
call to a known node checks that node's identity and a call to an address checks only cluster membership.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_ID_RE = re.compile(r"^[0-9a-f]{16}$")
CLUSTER_ID_RE = NODE_ID_RE
ROLES = ("device", "controller", "assistant")  # assistant: a home-automation client (pacctl client add)
ANY_NODE_NAME = "node.pac"
CA_DAYS = 3650
LEAF_DAYS = 397  # a node's certificate: about 13 months; `pacctl renew` issues fresh ones before they end
_ORG_PREFIX = "pac cluster "


def node_name(node_id: str | None) -> str:
    """TLS name to expect from a peer: its own name if known, else any device of the cluster."""
    return f"{node_id}.{ANY_NODE_NAME}" if node_id else ANY_NODE_NAME


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _subject(common_name: str, cluster_id: str | None, role: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if cluster_id:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG_PREFIX + cluster_id))
    if role:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name(attrs)


def create_authority(cluster_id: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA for one home cluster."""
    if not CLUSTER_ID_RE.match(cluster_id):
        raise ValueError(f"cluster id must be 16 lowercase hex digits, got {cluster_id!r}")
    key = new_key()
    name = _subject(f"PAC home authority {cluster_id}", cluster_id, None)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_csr(key: ec.EllipticCurvePrivateKey, node_id: str) -> x509.CertificateSigningRequest:
    """The request a device sends when it pairs: its public key and node id, signed by its key."""
    return (x509.CertificateSigningRequestBuilder().subject_name(_subject(node_id, None, None))
            .sign(key, hashes.SHA256()))


def self_signed(key: ec.EllipticCurvePrivateKey, node_id: str) -> x509.Certificate:
    """The certificate an unpaired device serves while it waits to be paired."""
    name = _subject(node_id, None, "unpaired")
    return _leaf_builder(name, name, key.public_key(), node_id, days=LEAF_DAYS).sign(key, hashes.SHA256())


def _leaf_builder(subject: x509.Name, issuer: x509.Name, public_key, node_id: str,
                  days: int) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_name(node_id)),
                                                    x509.DNSName(ANY_NODE_NAME)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
          csr: x509.CertificateSigningRequest, cluster_id: str, role: str) -> x509.Certificate:
    """Sign a node's request: checks the request's own signature and its node id first."""
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature does not verify")
    node_id = common_name(csr.subject)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not NODE_ID_RE.match(node_id):
        raise ValueError(f"the request's node id must be 16 lowercase hex digits, got {node_id!r}")
    subject = _subject(node_id, cluster_id, role)
    return _leaf_builder(subject, ca_cert.subject, csr.public_key(), node_id, LEAF_DAYS).sign(
        ca_key, hashes.SHA256())


def reissue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cert: x509.Certificate) -> x509.Certificate:
    """A fresh certificate (new serial, LEAF_DAYS from now) for the node, role and key `cert` names;
    refused unless `cert` is this authority's."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception as error:  # cryptography raises several types here
        raise ValueError(f"the certificate is not issued by this home's authority: {error}") from error
    return _leaf_builder(cert.subject, ca_cert.subject, cert.public_key(), common_name(cert.subject),
                         LEAF_DAYS).sign(ca_key, hashes.SHA256())


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


@dataclass(frozen=True)
class CertInfo:
    """Who a certificate names."""

    node_id: str
    cluster_id: str
    role: str


def describe(cert: x509.Certificate) -> CertInfo:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    org = str(orgs[0].value) if orgs else ""
    cluster = org[len(_ORG_PREFIX):] if org.startswith(_ORG_PREFIX) else ""
    return CertInfo(common_name(cert.subject), cluster, str(units[0].value) if units else "")


def verify_issued(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise ValueError unless `cert` is signed by `ca_cert` and valid now."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception as error:  # cryptography raises several types here
        raise ValueError(f"certificate is not issued by the cluster authority: {error}") from error
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ValueError("certificate is not valid now (check the device's clock)")


def same_public_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)
