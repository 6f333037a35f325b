"""The server's gate for an unpaired device: only pairing, health and reflection are open."""

from __future__ import annotations

import grpc

OPEN_WHILE_UNPAIRED = ("/pac.v1.Pairing/", "/grpc.health.v1.Health/", "/grpc.reflection.")
_NOT_PAIRED = "this device is not paired with a cluster yet: run 'pacctl pair HOST:PORT' on the controller"


async def _refuse_unary(request, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _NOT_PAIRED)


async def _refuse_stream(request_or_iterator, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _NOT_PAIRED)
    yield  # pragma: no cover - makes this an async generator, as streaming handlers are


class PairingGate(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_WHILE_UNPAIRED):
            return handler
        if handler.response_streaming:
            make = grpc.stream_stream_rpc_method_handler if handler.request_streaming \
                else grpc.unary_stream_rpc_method_handler
            return make(_refuse_stream, handler.request_deserializer, handler.response_serializer)
        make = grpc.stream_unary_rpc_method_handler if handler.request_streaming \
            else grpc.unary_unary_rpc_method_handler
        return make(_refuse_unary, handler.request_deserializer, handler.response_serializer)
