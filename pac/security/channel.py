"""Mutual-TLS client channels between nodes of one cluster, with refusals reported as UNAUTHENTICATED.

gRPC Python can only require a client certificate or not ask for one, so a daemon refuses a foreign or
missing certificate during the TLS handshake, before any RPC; gRPC then reports a bare UNAVAILABLE
("Socket closed"). The interceptor below looks at such failures once more with a plain TLS handshake and,
when the cause is a certificate, raises UNAUTHENTICATED with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence

import grpc

from pac.limits import MESSAGE_LIMIT_BYTES, grpc_size_options
from pac.security.authority import node_name
from pac.security.identity import Identity

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def secure_channel(target: str, identity: Identity, peer_node_id: str | None = None,
                   options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
    """An aio channel to `target` ("host:port") as `identity`.

    With `peer_node_id` the peer must hold that node's certificate; without, any device of the cluster.
    """
    from pac.security.identity import identity_channel_credentials

    name = node_name(peer_node_id)
    opts = [("grpc.ssl_target_name_override", name),
            *grpc_size_options(MESSAGE_LIMIT_BYTES), *options]
    credentials = grpc.ssl_channel_credentials(identity.ca_pem, None, None) if not identity.cert_pem \
        else identity_channel_credentials(identity)
    return grpc.aio.secure_channel(target, credentials, options=opts,
                                   interceptors=[RefusalInterceptor(target, identity, name)])


def tls_verdict(target: str, identity: Identity, server_name: str, timeout: float = 3.0) -> str | None:
    """Why a TLS connection as `identity` fails, in words; None if it does not fail on a certificate."""
    host, _, port = target.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=identity.ca_pem.decode())
    if identity.cert_pem:
        context.load_cert_chain(identity.cert_path, identity.key_path)
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                tls.sendall(_H2_PREFACE)
                # TLS 1.3: the server judges our certificate after the handshake; a gRPC server that
                # accepts it answers the preface with a SETTINGS frame, one that refuses it hangs up.
                if not tls.recv(1):
                    return _refused(target, "connection closed after the handshake")
    except ssl.SSLCertVerificationError as error:
        return (f"{target} does not hold a certificate of this cluster ({error.verify_message}); "
                "is it a device of another home, or not paired yet?")
    except ssl.SSLError as error:
        if "CERTIFICATE" in str(error).upper() or "UNKNOWN_CA" in str(error).upper() \
                or isinstance(error, ssl.SSLEOFError):
            return _refused(target, error.reason or str(error))
        return None
    except OSError:
        return None
    return None


def _refused(target: str, why: str) -> str:
    return (f"{target} refused our certificate ({why}): this node is not paired with the device's "
            "cluster; pair it with 'pacctl pair'")


class RefusalInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Turns an UNAVAILABLE caused by a refused certificate into UNAUTHENTICATED."""

    def __init__(self, target: str, identity: Identity, server_name: str):
        self._target, self._identity, self._name = target, identity, server_name

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            verdict = await asyncio.to_thread(tls_verdict, self._target, self._identity, self._name)
            if verdict is None:
                raise
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), details=verdict) from error
        return call
