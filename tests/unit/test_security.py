from __future__ import annotations

import stat

import pytest
from cryptography import x509

from pac.security import authority, is_paired, load_identity, pairing
from pac.security.home import HomeError, init_home, load_authority
from pac.security.identity import ensure_key, self_signed_pair, store_identity


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_home_is_owner_only_and_refuses_twice(tmp_path):
    home = tmp_path / "home"
    me = init_home(home)
    assert me.role == "controller" and authority.CLUSTER_ID_RE.match(me.cluster_id)
    assert _mode(home) == 0o700 and _mode(home / "ca") == 0o700
    for path in (home / "ca/key.pem", home / "tls/key.pem", home / "tls/cert.pem"):
        assert _mode(path) == 0o600
    with pytest.raises(HomeError, match="--force"):
        init_home(home)
    assert init_home(home, force=True).cluster_id != me.cluster_id


def test_device_certificate_issue_and_store(tmp_path):
    ca_key, ca_cert, cluster = load_authority(_home(tmp_path))
    state = tmp_path / "device"
    node = "0123456789abcdef"
    key = authority.load_key(ensure_key(state))
    cert = authority.issue(ca_key, ca_cert, authority.make_csr(key, node), cluster, "device")
    assert not is_paired(state)
    me = store_identity(state, authority.cert_pem(cert), authority.cert_pem(ca_cert))
    assert (me.node_id, me.cluster_id, me.role) == (node, cluster, "device")
    assert load_identity(state) == me and is_paired(state)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == [f"{node}.node.pac", "node.pac"]


def test_store_refuses_a_certificate_for_another_key_or_authority(tmp_path):
    ca_key, ca_cert, cluster = load_authority(_home(tmp_path))
    other_key = authority.new_key()
    cert = authority.issue(ca_key, ca_cert, authority.make_csr(other_key, "0123456789abcdef"), cluster, "device")
    with pytest.raises(ValueError, match="not for this node's key"):
        store_identity(tmp_path / "d", authority.cert_pem(cert), authority.cert_pem(ca_cert))
    _, foreign_ca = authority.create_authority("ffffffffffffffff")
    with pytest.raises(ValueError, match="not issued by the cluster authority"):
        store_identity(tmp_path / "d", authority.cert_pem(cert), authority.cert_pem(foreign_ca))


def test_issue_checks_the_request(tmp_path):
    ca_key, ca_cert, cluster = load_authority(_home(tmp_path))
    with pytest.raises(ValueError, match="node id"):
        authority.issue(ca_key, ca_cert, authority.make_csr(authority.new_key(), "NOT-HEX"), cluster, "device")
    with pytest.raises(ValueError, match="role"):
        authority.issue(ca_key, ca_cert, authority.make_csr(authority.new_key(), "0" * 16), cluster, "root")


def test_key_files_readable_by_others_are_refused(tmp_path):
    ensure_key(tmp_path)
    (tmp_path / "tls/key.pem").chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        ensure_key(tmp_path)


def test_self_signed_is_made_once(tmp_path):
    assert self_signed_pair(tmp_path, "0" * 16) == self_signed_pair(tmp_path, "0" * 16)


def test_pairing_proofs():
    code, salt = pairing.new_code(), b"s" * 16
    assert len(pairing.normalise(code)) == pairing.CODE_LENGTH
    assert pairing.normalise(code.lower().replace("-", " ")) == pairing.normalise(code)
    digest = pairing.transcript(salt=salt, node_id="n", csr_pem=b"c", server_cert_pem=b"s", cluster_id="k",
                                certificate_pem=b"x", ca_certificate_pem=b"y")
    key = pairing.derive_key(code, salt)
    proof = pairing.proof(key, "controller", digest)
    assert pairing.check(key, "controller", digest, proof)
    assert not pairing.check(key, "daemon", digest, proof)  # a proof cannot be reflected back
    other = pairing.transcript(salt=salt, node_id="n", csr_pem=b"c", server_cert_pem=b"MITM", cluster_id="k",
                               certificate_pem=b"x", ca_certificate_pem=b"y")
    assert not pairing.check(key, "controller", other, proof)
    with pytest.raises(ValueError, match="10 characters"):
        pairing.normalise("O0O0O-I1I1I")


def _home(tmp_path):
    init_home(tmp_path / "home")
    return tmp_path / "home"
