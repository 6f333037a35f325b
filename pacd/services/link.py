"""Link service: echo for peers' timing, and probing this device's link to a peer."""

from __future__ import annotations

import grpc

from pac.discovery.records import parse_peer
from pac.limits import MAX_CHUNK_BYTES
from pac.net.convert.daemon import link_to_proto
from pac.security import NODE_ID_RE
from pac.v1 import daemon_pb2, daemon_pb2_grpc
from pacd.linkprobe import measure_link
from pacd.rpc import InvalidRequest, check_pattern, check_range, handler

MAX_ECHO_BYTES = MAX_CHUNK_BYTES  # an echo fits one message under gRPC's default limit
CALL_TIMEOUT_S = 10.0


class LinkServicer(daemon_pb2_grpc.LinkServicer):
    def __init__(self, daemon):
        self._daemon = daemon

    @handler
    async def Echo(self, request, context) -> daemon_pb2.EchoReply:
        check_range("payload size", len(request.payload), 0, MAX_ECHO_BYTES)
        check_range("reply_bytes", request.reply_bytes, 0, MAX_ECHO_BYTES)
        return daemon_pb2.EchoReply(payload=bytes(request.reply_bytes))

    @handler
    async def ProbePeer(self, request, context) -> daemon_pb2.LinkMeasurement:
        try:
            host, port = parse_peer(request.address)
        except ValueError as error:
            raise InvalidRequest(f"address: {error}") from error
        if request.peer_node_id:
            check_pattern("peer_node_id", request.peer_node_id, NODE_ID_RE, "16 lowercase hex digits")
        size = request.payload_bytes or 1024 * 1024
        check_range("payload_bytes", size, 1024, MAX_ECHO_BYTES)
        rounds = check_range("rounds", request.rounds or 5, 1, 50)
        async with self._daemon.channel(f"{host}:{port}", request.peer_node_id or None) as channel:
            peer_info = await daemon_pb2_grpc.DeviceStub(channel).GetInfo(
                daemon_pb2.GetInfoRequest(), timeout=CALL_TIMEOUT_S)
            link = daemon_pb2_grpc.LinkStub(channel)

            async def echo(payload: bytes, reply_bytes: int) -> None:
                await link.Echo(daemon_pb2.EchoRequest(payload=payload, reply_bytes=reply_bytes),
                                timeout=CALL_TIMEOUT_S)

            rtt, bandwidth = await measure_link(echo, size, rounds)
        return link_to_proto({"source": self._daemon.node_id, "target": peer_info.node_id,
                                      "rtt_s": rtt, "bandwidth_bytes_per_s": bandwidth,
                                      "payload_bytes": size, "rounds": rounds})


def register(server: grpc.aio.Server, daemon) -> list[str]:
    daemon_pb2_grpc.add_LinkServicer_to_server(LinkServicer(daemon), server)
    return [daemon_pb2.DESCRIPTOR.services_by_name["Link"].full_name]


