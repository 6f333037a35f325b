"""The server's gates: an unpaired device opens only pairing, health and reflection (PairingGate); a
paired one lets each certificate's role call what that role may (RoleGate): devices and the controller
everything, a home-automation client (role "assistant") only what asking the household's model needs."""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc
from cryptography import x509

from pac.security import authority
from pac.security.revocation import Revocations

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


# What each role may call, by method-name prefix; a role not listed here may call nothing.
ALLOWED = {
    "device": ("/",),
    "controller": ("/",),
    "assistant": ("/pac.v1.Assistant/Generate", "/pac.v1.Assistant/Classify", "/pac.v1.Assistant/ListModels",
                  "/pac.v1.Device/GetInfo", "/grpc.health.v1.Health/", "/grpc.reflection."),
}


@functools.lru_cache(maxsize=256)
def _certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _role(pem: bytes) -> str:
    return authority.describe(_certificate(pem)).role


def peer_role(context) -> str:
    """The role in the caller's certificate (verified by TLS against the home's authority)."""
    certificates = context.auth_context().get("x509_pem_cert") or []
    return _role(certificates[0]) if certificates else ""


def _guarded(behavior, method: str, streaming_response: bool, revocations: Callable[[], Revocations]):
    def refusal(context) -> tuple[grpc.StatusCode, str] | None:
        certificates = context.auth_context().get("x509_pem_cert") or []
        if certificates and revocations().revoked(_certificate(certificates[0])):
            who = authority.describe(_certificate(certificates[0])).node_id
            return grpc.StatusCode.UNAUTHENTICATED, (f"the certificate of {who} was revoked by the home (pacctl "
                                                     "unpair): pair the device again to use it")
        role = _role(certificates[0]) if certificates else ""
        if any(method.startswith(prefix) for prefix in ALLOWED.get(role, ())):
            return None
        return grpc.StatusCode.PERMISSION_DENIED, f"a certificate of role {role or 'none'!r} may not call {method}"

    if streaming_response:
        async def checked_stream(request_or_iterator, context):
            if refused := refusal(context):
                await context.abort(*refused)
            async for reply in behavior(request_or_iterator, context):
                yield reply

        return checked_stream

    async def checked(request_or_iterator, context):
        if refused := refusal(context):
            await context.abort(*refused)
        return await behavior(request_or_iterator, context)

    return checked


class RoleGate(grpc.aio.ServerInterceptor):
    """Each call: refused if its certificate is revoked (the home's list, `revocations()`), else allowed by
    its certificate's role."""

    def __init__(self, revocations: Callable[[], Revocations] = Revocations) -> None:
        self.revocations = revocations

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        kinds = {(False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
                 (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
                 (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
                 (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler)}
        name, make = kinds[(handler.request_streaming, handler.response_streaming)]
        behavior = _guarded(getattr(handler, name), method, handler.response_streaming, self.revocations)
        return make(behavior, handler.request_deserializer, handler.response_serializer)
