"""pac.v1.TensorStream: tensors between devices; the servicer (pacd/services/tensor_servicer.py) and
PyTorch are imported by the first call (pacd/services/deferred.py)."""

from __future__ import annotations

import grpc

from pac.v1 import tensor_pb2, tensor_pb2_grpc
from pacd.services.deferred import Deferred

SERVICE_NAME = "pac.v1.TensorStream"


def register(server: grpc.aio.Server, daemon: object) -> list[str]:
    service = tensor_pb2.DESCRIPTOR.services_by_name["TensorStream"]
    tensor_pb2_grpc.add_TensorStreamServicer_to_server(
        Deferred(daemon, "pacd.services.tensor_servicer:servicer", service), server)
    return [SERVICE_NAME]
