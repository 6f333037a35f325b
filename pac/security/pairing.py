"""The one-time pairing code and the proofs both sides derive from it (pure: no I/O).

The daemon prints a random code; the person types it into the controller. Neither side sends the code:
each sends an HMAC over the pairing transcript, keyed by scrypt(code, salt). The transcript includes the
TLS certificate the controller saw, so a machine in the middle that relays the calls cannot reuse the
controller's proof, and the slow key derivation keeps the code from being guessed offline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"  # no 0/O, 1/I/L: read aloud and typed without mistakes
CODE_LENGTH = 10  # about 49 bits
MAX_ATTEMPTS = 5  # wrong proofs before the daemon draws a new code


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def normalise(code: str) -> str:
    """Accept what a person types: any case, dashes and spaces anywhere."""
    cleaned = code.upper().replace("-", "").replace(" ", "")
    if len(cleaned) != CODE_LENGTH or any(c not in ALPHABET for c in cleaned):
        raise ValueError(f"a pairing code is {CODE_LENGTH} characters from {ALPHABET} (like ABCDE-23456)")
    return cleaned


def derive_key(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(normalise(code).encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def transcript(*, salt: bytes, node_id: str, csr_pem: bytes, server_cert_pem: bytes, cluster_id: str,
               certificate_pem: bytes, ca_certificate_pem: bytes) -> bytes:
    """A digest of everything both sides must agree on, each part length-prefixed."""
    digest = hashlib.sha256(b"pac-pairing-v1")
    for part in (salt, node_id.encode(), csr_pem, server_cert_pem, cluster_id.encode(), certificate_pem,
                 ca_certificate_pem):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def proof(key: bytes, role: str, transcript_digest: bytes) -> bytes:
    if role not in ("controller", "daemon"):
        raise ValueError(f"unknown pairing role {role!r}")
    return hmac.new(key, role.encode() + transcript_digest, hashlib.sha256).digest()


def check(key: bytes, role: str, transcript_digest: bytes, received: bytes) -> bool:
    return hmac.compare_digest(proof(key, role, transcript_digest), received)
