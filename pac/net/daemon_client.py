"""The controller's client for a daemon: every call has a deadline; errors come back as DaemonError."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from pac.discovery.records import DeviceRecord
from pac.errors import PacError
from pac.net.convert.common import info_to_dict, record_from_info
from pac.net.convert.daemon import link_to_dict, profile_from_proto
from pac.security import Identity, authority, node_name, pairing, secure_channel
from pac.security.home import load_authority
from pac.v1 import common_pb2, daemon_pb2, daemon_pb2_grpc, pairing_pb2, pairing_pb2_grpc

INFO_TIMEOUT_S = 5.0
PAIR_TIMEOUT_S = 15.0


class DaemonError(PacError):
    """A call to a daemon failed; the message names the daemon and what it answered."""

    def __init__(self, address: str, error: grpc.aio.AioRpcError, insecure: bool = False):
        self.code = error.code()
        super().__init__(f"{address}: {error.code().name}: {error.details()}{unavailable_hint(error, insecure)}")


def unavailable_hint(error: grpc.aio.AioRpcError, insecure: bool) -> str:
    """What a person can do about a connection gRPC reports only as UNAVAILABLE."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return ""
    details = error.details() or ""
    if "refused" in details.lower():
        return " (nothing listens there: is pacd running, and is the port the one `pacd info` prints?)"
    if insecure and "socket closed" in details.lower():
        return (" (the device speaks TLS and closed a plaintext connection: leave out --insecure, which is for "
                "`pacd serve --insecure` development daemons only)")
    return ""


@dataclass
class DaemonClient:
    """Calls to one daemon as `identity` (None: insecure loopback development)."""

    address: str
    identity: Identity | None
    peer_node_id: str | None = None

    async def __aenter__(self) -> DaemonClient:
        self._channel = grpc.aio.insecure_channel(self.address) if self.identity is None \
            else secure_channel(self.address, self.identity, self.peer_node_id)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._channel.close()

    async def _call(self, stub_method, request, timeout: float):
        try:
            return await stub_method(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise DaemonError(self.address, error, self.identity is None) from error

    async def allreduce_seconds(self, group_id: str, members: list[str], rank: int, numel: int,
                                iterations: int, timeout: float = 30.0) -> list[float]:
        """Run `iterations` ring AllReduces of `numel` float32 elements as rank `rank` of `members` (every
        member must be asked alike, at once); the seconds each took on this daemon."""
        from pac.collective import RingGroup
        from pac.net.convert.collective import group_to_proto
        from pac.v1 import collective_pb2, collective_pb2_grpc

        request = collective_pb2.AllReduceRequest(
            group=group_to_proto(RingGroup(group_id, rank, tuple(members), timeout)), op_id=1, iterations=iterations,
            synthetic=collective_pb2.SyntheticTensors(numel=numel, dtype="float32", seed=1))
        reply = await self._call(collective_pb2_grpc.CollectiveStub(self._channel).AllReduce, request,
                                 timeout * (iterations + 2))
        return list(reply.seconds)

    async def echo(self, reply_bytes: int = 0) -> None:
        """One empty round trip (Link.Echo), `reply_bytes` back."""
        await self._call(daemon_pb2_grpc.LinkStub(self._channel).Echo,
                         daemon_pb2.EchoRequest(reply_bytes=reply_bytes), INFO_TIMEOUT_S)

    async def _info(self) -> common_pb2.NodeInfo:
        return await self._call(daemon_pb2_grpc.DeviceStub(self._channel).GetInfo, daemon_pb2.GetInfoRequest(),
                                INFO_TIMEOUT_S)

    async def info(self) -> dict[str, Any]:
        return info_to_dict(await self._info())

    async def record(self, host: str, port: int, source: str) -> DeviceRecord:
        """The daemon as discovery lists it (`source`: how it was found)."""
        return record_from_info(await self._info(), host, port, source)

    async def profile(self, model: str, batch_sizes: list[int], seq_len: int, reduction_factor: int = 0,
                      refresh: bool = False, timeout: float = 3600.0, quantization: str = "none") -> dict[str, Any]:
        request = daemon_pb2.ProfileRequest(model=model, batch_sizes=batch_sizes, seq_len=seq_len,
                                            reduction_factor=reduction_factor, refresh=refresh,
                                            quantization=quantization)
        reply = await self._call(daemon_pb2_grpc.DeviceStub(self._channel).Profile, request, timeout)
        return {**profile_from_proto(reply.profile), "from_store": reply.from_store,
                "elapsed_s": reply.elapsed_s}

    async def update_revocations(self, crl_pem: bytes) -> int:
        """Send the home's revocation list; the CRL number the device holds after."""
        reply = await self._call(daemon_pb2_grpc.DeviceStub(self._channel).UpdateRevocations,
                                 daemon_pb2.RevocationList(crl_pem=crl_pem), INFO_TIMEOUT_S)
        return reply.number

    async def renew_certificate(self, cert_pem: bytes) -> str:
        """Hand the device a fresh certificate for its key; its end (ISO 8601), once kept."""
        reply = await self._call(daemon_pb2_grpc.DeviceStub(self._channel).RenewCertificate,
                                 daemon_pb2.RenewCertificateRequest(certificate_pem=cert_pem), INFO_TIMEOUT_S)
        return reply.not_after

    async def probe(self, address: str, peer_node_id: str = "", payload_bytes: int = 0, rounds: int = 0,
                    timeout: float = 60.0) -> dict[str, Any]:
        request = daemon_pb2.ProbePeerRequest(address=address, peer_node_id=peer_node_id,
                                              payload_bytes=payload_bytes, rounds=rounds)
        reply = await self._call(daemon_pb2_grpc.LinkStub(self._channel).ProbePeer, request, timeout)
        return link_to_dict(reply)


def fetch_server_certificate(host: str, port: int, timeout: float = 5.0) -> bytes:
    """The certificate an (unpaired) daemon serves, unverified: pairing verifies it through the code."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der).encode()


async def pair(host: str, port: int, home, ask_code, controller_name: str = "pacctl") -> dict[str, Any]:
    """Pair the daemon at host:port with the controller's cluster. `ask_code(info) -> str` asks the person."""
    ca_key, ca_cert, cluster_id = load_authority(home)
    address = f"{host}:{port}"
    try:
        served = fetch_server_certificate(host, port)
    except OSError as error:
        raise PacError(f"cannot pair with {address}: {error.strerror or error}; is pacd running there (not with "
                       "--insecure), and is the address the one `pacd info` prints?") from None
    described = authority.describe(x509.load_pem_x509_certificate(served))
    node_id = described.node_id
    if described.cluster_id == cluster_id:
        raise PacError(f"{address}: device {node_id} is paired with this home already; nothing to do "
                       "(`pacctl devices` lists it)")
    if described.cluster_id:
        raise PacError(f"{address}: device {node_id} is paired with another home (cluster {described.cluster_id}); "
                       "to move it here, stop pacd on it, remove STATE_DIR/tls/cert.pem and ca.pem, start it and "
                       "pair again (docs/security.md)")
    credentials = grpc.ssl_channel_credentials(root_certificates=served)
    options = [("grpc.ssl_target_name_override", node_name(node_id))]
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        stub = pairing_pb2_grpc.PairingStub(channel)
        try:
            begun = await stub.BeginPairing(pairing_pb2.BeginPairingRequest(controller_name=controller_name),
                                            timeout=PAIR_TIMEOUT_S)
            csr = x509.load_pem_x509_csr(begun.csr_pem)
            if not authority.same_public_key(csr.public_key(), x509.load_pem_x509_certificate(served).public_key()):
                raise PacError(f"{address}: the pairing request is not for the key the device serves; "
                               "someone may be in the middle; pairing stopped")
            code = ask_code(info_to_dict(begun.info))
            issued = authority.issue(ca_key, ca_cert, csr, cluster_id, "device")
            cert = authority.cert_pem(issued)
            ca_pem = authority.cert_pem(ca_cert)
            digest = pairing.transcript(salt=begun.salt, node_id=node_id, csr_pem=begun.csr_pem,
                                        server_cert_pem=served, cluster_id=cluster_id, certificate_pem=cert,
                                        ca_certificate_pem=ca_pem)
            key = pairing.derive_key(code, begun.salt)
            done = await stub.CompletePairing(pairing_pb2.CompletePairingRequest(
                cluster_id=cluster_id, certificate_pem=cert, ca_certificate_pem=ca_pem,
                proof=pairing.proof(key, "controller", digest)), timeout=PAIR_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise DaemonError(address, error) from error
    if not pairing.check(key, "daemon", digest, done.proof):
        raise PacError(f"{address}: the device's answer does not prove it knows the code; do not trust it")
    return {**info_to_dict(done.info), "certificate_serial": issued.serial_number}
