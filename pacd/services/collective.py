"""pac.v1.Collective: ring AllReduce frames between devices; the servicer
(pacd/services/collective_servicer.py) and PyTorch are imported by the first call (pacd/services/deferred.py).
"""

from __future__ import annotations

import grpc

from pac.v1 import collective_pb2
from pacd.services.deferred import Deferred

SERVICE_NAME = "pac.v1.Collective"


def _ring_frame(data: bytes):
    from pac.net.convert.collective import ring_frame_from_bytes  # imported once the servicer is

    return ring_frame_from_bytes(data)


def register(server: grpc.aio.Server, daemon: object) -> list[str]:
    """Serve pac.v1.Collective; RingPush reads frames with the hand-written codec (pac/net/convert/collective.py)."""
    servicer = Deferred(daemon, "pacd.services.collective_servicer:servicer",
                        collective_pb2.DESCRIPTOR.services_by_name["Collective"])
    handlers = {
        "RingPush": grpc.stream_unary_rpc_method_handler(
            servicer.RingPush,
            request_deserializer=_ring_frame,
            response_serializer=collective_pb2.RingAck.SerializeToString,
        ),
        "AllReduce": grpc.unary_unary_rpc_method_handler(
            servicer.AllReduce,
            request_deserializer=collective_pb2.AllReduceRequest.FromString,
            response_serializer=collective_pb2.AllReduceReply.SerializeToString,
        ),
    }
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    return [SERVICE_NAME]
