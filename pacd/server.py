"""Build the daemon's grpc.aio server: registered services, health, reflection, credentials."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pac.limits import grpc_size_options
from pac.security import server_credentials
from pac.security.identity import self_signed_pair
from pacd.auth import PairingGate, RoleGate
from pacd.services import SERVICE_MODULES


class _State(Protocol):
    root: Path


class Daemon(Protocol):
    """What building the server needs of pacd.daemon.Daemon (which builds its server here)."""

    mode: str  # insecure | pairing | secure
    state: _State
    node_id: str
    config: Any  # pacd.config.DaemonConfig: host, max_message_bytes
    service_names: list[str]

log = logging.getLogger(__name__)


class BindError(RuntimeError):
    pass


def _credentials(daemon: Daemon) -> grpc.ServerCredentials | None:
    if daemon.mode == "insecure":
        return None
    if daemon.mode == "secure":
        return server_credentials(daemon.state.root)
    key, cert = self_signed_pair(daemon.state.root, daemon.node_id)  # pairing: server-side TLS only
    return grpc.ssl_server_credentials([(key, cert)])


def build(daemon: Daemon, port: int) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """A started-ready server bound to `port` (0: any); returns (server, health servicer, bound port)."""
    size = daemon.config.max_message_bytes
    server = grpc.aio.server(
        interceptors=[PairingGate()] if daemon.mode == "pairing" else [RoleGate(lambda: daemon.revocations)] if daemon.mode == "secure" else [],
        options=[*grpc_size_options(size), ("grpc.so_reuseport", 0)],
    )
    names = []
    for module_name in SERVICE_MODULES:
        names += importlib.import_module(f"pacd.services.{module_name}").register(server, daemon)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{daemon.config.host}:{port}"
    credentials = _credentials(daemon)
    try:
        bound = server.add_secure_port(address, credentials) if credentials \
            else server.add_insecure_port(address)
    except RuntimeError as error:
        raise BindError(f"cannot listen on {address}: {error} (is another pacd running?)") from error
    if not bound:
        raise BindError(f"cannot listen on {address} (in use, or not an address of this machine)")
    daemon.service_names = names
    return server, health_servicer, bound


async def mark_serving(health_servicer: health.aio.HealthServicer, names: list[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *names]:
        await health_servicer.set(name, status)
