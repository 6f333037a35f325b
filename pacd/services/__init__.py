"""gRPC services the daemon serves, one module each.

Every module named in SERVICE_MODULES defines

    def register(server: grpc.aio.Server, daemon: "pacd.daemon.Daemon") -> list[str]

which adds its servicer(s) to `server` and returns their full service names (for health and reflection).
The servicers stay thin: they check the request, convert protobuf to the product's own types
(pac/net/convert/, one module per proto) and delegate to the logic in `pac/`.
"""

SERVICE_MODULES: list[str] = ["device", "link", "pairing", "tensor", "collective", "stage", "assistant"]
