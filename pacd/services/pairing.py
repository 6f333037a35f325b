"""Pairing service: how an unpaired device joins the home cluster (see pac/security/pairing.py)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from pac.net.convert.common import node_info
from pac.security import CLUSTER_ID_RE
from pac.v1 import pairing_pb2, pairing_pb2_grpc
from pacd.pairing import WrongCode
from pacd.rpc import InvalidRequest, NotReady, check_pattern, handler

log = logging.getLogger(__name__)
MAX_PEM_BYTES = 16 * 1024


class PairingServicer(pairing_pb2_grpc.PairingServicer):
    def __init__(self, daemon):
        self._daemon = daemon

    def _session(self):
        if self._daemon.pairing is None:
            raise NotReady("this device is already paired (or in insecure mode); to move it to another "
                           "cluster, stop pacd and remove the tls/ directory of its state directory")
        return self._daemon.pairing

    @handler
    async def BeginPairing(self, request, context) -> pairing_pb2.BeginPairingReply:
        name = request.controller_name
        if len(name) > 64 or not name.isprintable():
            raise InvalidRequest("controller_name must be at most 64 printable characters")
        offer = self._session().offer()
        log.warning("controller %r asks to pair; it needs the pairing code", name or "(unnamed)")
        return pairing_pb2.BeginPairingReply(info=node_info(self._daemon.facts()), csr_pem=offer.csr_pem, salt=offer.salt)

    @handler
    async def CompletePairing(self, request, context) -> pairing_pb2.CompletePairingReply:
        session = self._session()
        check_pattern("cluster_id", request.cluster_id, CLUSTER_ID_RE, "16 lowercase hex digits")
        for field in ("certificate_pem", "ca_certificate_pem"):
            if not 0 < len(getattr(request, field)) <= MAX_PEM_BYTES:
                raise InvalidRequest(f"{field} must be a PEM certificate of at most {MAX_PEM_BYTES} bytes")
        if len(request.proof) != 32:
            raise InvalidRequest("proof must be 32 bytes (HMAC-SHA256)")
        try:
            identity, proof = await asyncio.to_thread(
                session.complete, request.cluster_id, request.certificate_pem, request.ca_certificate_pem,
                request.proof)
        except WrongCode as error:
            log.warning("pairing refused: %s", error)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        self._daemon.identity = identity
        log.info("paired: node %s joined cluster %s", identity.node_id, identity.cluster_id)
        reply = pairing_pb2.CompletePairingReply(proof=proof, info=node_info(self._daemon.facts()))
        asyncio.get_running_loop().call_later(0.2, self._daemon.restart_secure)
        return reply


def register(server: grpc.aio.Server, daemon) -> list[str]:
    pairing_pb2_grpc.add_PairingServicer_to_server(PairingServicer(daemon), server)
    return [pairing_pb2.DESCRIPTOR.services_by_name["Pairing"].full_name]
