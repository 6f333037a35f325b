"""The device daemon: owns the gRPC server, mDNS registration and every long-lived task.

Lifecycle: start server -> print the bound port -> sd_notify READY -> advertise -> wait for SIGTERM /
SIGINT (or a restart after pairing) -> sd_notify STOPPING -> health NOT_SERVING -> withdraw mDNS ->
stop the server (in-flight calls get `shutdown_grace_s`, then are cancelled with a status) -> cancel tasks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from pac.assistant.queue import AnswerQueue
from pac.assistant.serving import Assistant
from pac.assistant.store import ModelStore
from pac.discovery.mdns import Advertiser
from pac.discovery.records import DeviceRecord
from pac.limits import grpc_size_options
from pac.security import Identity, is_paired, load_identity, secure_channel
from pac.security.files import write_private
from pac.security.revocation import CertificateRefused, RevocationError, Revocations, read_crl
from pac.worker.slot import JobSlot
from pacd import notify, server
from pacd.config import DaemonConfig
from pacd.pairing import PairingSession
from pacd.state import StateDir
from pacd.sysinfo import accelerator, cpu_count, disk_free, software_version, total_memory

log = logging.getLogger(__name__)

# What a job's first stage load would otherwise import (about 1.5 s of CPU on a small x86 core): the
# stage host, transformers' model loading and auto classes, and the tokenizers.
WARM_UP_MODULES = ("pac.worker.stage", "pac.worker.phase2", "transformers.activations",
                   "transformers.modeling_utils", "transformers.models.auto.modeling_auto",
                   "transformers.models.auto.tokenization_auto")


def _resident() -> str:
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return f"{kib / 1024:.0f} MiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def warm_up() -> None:
    """Import the training code in the background once serving, so the first job does not wait for it.
    Imports only: no model is loaded, nothing is held but the modules (they would be imported anyway)."""
    import importlib

    from pacd.services.deferred import IMPORTS

    started = time.perf_counter()
    for name in WARM_UP_MODULES:
        try:
            with IMPORTS:
                importlib.import_module(name)
        except Exception:  # a broken optional import shows up, with its cause, when a job needs it
            log.debug("warm-up: importing %s failed", name, exc_info=True)
            return
    from pac.worker.heap import trim_heap

    trim_heap()  # what the imports allocated and let go goes back to the system
    log.info("warm-up: training code imported in %.1f s; resident %s (the Python runtime, gRPC, PyTorch and the "
             "training code, held for the first job; no model until a job loads one; warm_up = false keeps "
             "about 340 MB less until then)", time.perf_counter() - started, _resident())


class Daemon:
    """What services see: identity, configuration, peers' channels, and a home for background work."""

    def __init__(self, config: DaemonConfig, out: Callable[[str], None] = print):
        self.config = config
        self.state = StateDir.open(config.state_dir)
        self.node_id = self.state.node_id()
        self.memory_budget = config.memory_budget
        self.accelerator = accelerator()
        self.identity: Identity | None = None
        self.revocations = Revocations()  # the home's newest revocation list this device holds
        self.pairing: PairingSession | None = None
        self.port = config.port
        self.service_names: list[str] = []
        self.jobs = JobSlot(self.spawn)  # the one training job this device holds (Stage); Assistant asks it
        # the tuned models this device serves, and the one queue of requests for them (Assistant, Wyoming)
        self.answers = AnswerQueue(Assistant(ModelStore(self.state.root / "models")), self.spawn,
                                   training=lambda: self.jobs.job.job_id if self.jobs.job else None)
        self._out = out
        self._tasks: set[asyncio.Task] = set()
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._wake = asyncio.Event()
        self._reason = ""
        self._refresh_mode()

    # -- what services use -------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """"insecure" (loopback development), "pairing" (waiting for a controller) or "secure"."""
        return self._mode

    @property
    def cluster_id(self) -> str:
        return self.identity.cluster_id if self.identity else ""

    def channel(self, target: str, peer_node_id: str | None = None) -> grpc.aio.Channel:
        """A channel to another daemon: mutual TLS as this node, or plaintext in insecure mode."""
        size = self.config.max_message_bytes
        options = grpc_size_options(size)
        if self.mode == "insecure":
            return grpc.aio.insecure_channel(target, options=options)
        if self.identity is None:
            raise PermissionError("this device is not paired: it cannot call other devices yet")
        return secure_channel(target, self.identity, peer_node_id, options)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run long-lived work owned by the daemon; it is cancelled at shutdown."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._shutdown_hooks.append(hook)

    def stop(self, reason: str = "stop requested") -> None:
        self._reason = self._reason or reason
        self._wake.set()

    def restart_secure(self) -> None:
        """After pairing: serve again, now in mutual TLS, on the same port."""
        self._reason = "restart"
        self._wake.set()

    def facts(self) -> dict[str, Any]:
        """What NodeInfo reports (pac/net/convert/common.py makes the message)."""
        return dict(node_id=self.node_id, cluster_id=self.cluster_id, memory_budget_bytes=self.memory_budget,
                    total_memory_bytes=total_memory(), accelerator=self.accelerator, cpu_count=cpu_count(),
                    hostname=socket.gethostname(), paired=bool(self.cluster_id),
                    insecure=self.mode == "insecure", software_version=software_version(),
                    disk_free_bytes=disk_free(self.state.root), revocation_number=self.revocations.number)

    def _authority(self):
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.identity.ca_pem)

    def update_revocations(self, pem: bytes) -> int:
        """Keep the home's revocation list `pem` if it is signed by the home and no older than the one
        held; returns the CRL number held after."""
        if self.identity is None:
            raise RevocationError("this device is not paired: it holds no revocation list")
        found = read_crl(pem, self._authority())
        if found.number < self.revocations.number:
            raise RevocationError(f"revocation list {found.number} is older than the one held "
                                  f"({self.revocations.number})")
        if found.number > self.revocations.number:
            write_private(self.identity.directory / "crl.pem", pem)
            self.revocations = found
            log.info("revocation list %d: %d certificate(s) revoked", found.number, len(found.serials))
        return self.revocations.number

    def renew_certificate(self, cert_pem: bytes) -> str:
        """Keep a fresh certificate of the home for this node's key, node id and role, then serve on it
        (the server restarts, as after pairing); refused while a job is held. Returns its end (ISO)."""
        from cryptography import x509

        from pac.security import authority
        from pac.security.identity import store_identity

        if self.identity is None:
            raise PermissionError("this device is not paired: pair it (pacctl pair), there is nothing to renew")
        if self.jobs.job is not None:
            raise CertificateRefused(f"this device holds job {self.jobs.job.job_id}: renew after it ends")
        new = x509.load_pem_x509_certificate(cert_pem)
        who = authority.describe(new)
        if (who.node_id, who.cluster_id, who.role) != (self.node_id, self.cluster_id, "device"):
            raise CertificateRefused(f"the certificate is for {who.node_id} ({who.role}) of cluster {who.cluster_id}, "
                                  f"not this device {self.node_id} of {self.cluster_id}")
        try:
            self.identity = store_identity(self.state.root, cert_pem, self.identity.ca_pem)
        except ValueError as error:
            raise CertificateRefused(str(error)) from None
        log.info("certificate renewed until %s: restarting the server on it", new.not_valid_after_utc.isoformat())
        asyncio.get_running_loop().call_later(0.2, self.restart_secure)
        return new.not_valid_after_utc.isoformat()

    def record(self) -> DeviceRecord:
        return DeviceRecord(self.node_id, self.cluster_id, self.config.host, self.port,
                            memory_budget_bytes=self.memory_budget, accelerator=self.accelerator,
                            hostname=socket.gethostname())

    # -- lifecycle ---------------------------------------------------------------------------------
    def _refresh_mode(self) -> None:
        if self.config.insecure:
            self._mode = "insecure"
        elif is_paired(self.state.root):
            self._mode, self.identity, self.pairing = "secure", load_identity(self.state.root), None
            held = self.identity.directory / "crl.pem"
            if held.exists():
                try:
                    self.revocations = read_crl(held.read_bytes(), self._authority())
                except RevocationError as error:  # another home's list (the device was moved): not ours
                    log.warning("ignoring %s: %s", held, error)
        else:
            self._mode, self.pairing = "pairing", PairingSession(self.state.root, self.node_id, self._out)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, signal.Signals(sig).name)
        advertiser = Advertiser(self.config.mdns_interfaces) if self.config.mdns else None
        wyoming = None
        first = True
        try:
            while True:
                grpc_server, health_servicer, self.port = server.build(self, self.port)
                await grpc_server.start()
                await server.mark_serving(health_servicer, self.service_names, True)
                if first:
                    self._announce()
                    first = False
                if advertiser:
                    await advertiser.update(self.record(), self._advertised_host())
                if self.config.wyoming and wyoming is None:
                    wyoming = await self._start_wyoming(advertiser)
                if not self.config.warm_up and "torch" not in sys.modules:
                    log.info("idle: resident %s (Python, gRPC, TLS, mDNS); PyTorch and the training code are "
                             "imported when a job or a question first needs them (warm_up = true: at start)",
                             _resident())
                await self._wake.wait()
                if self._reason != "restart":
                    break
                log.info("paired with cluster %s: restarting in mutual TLS", self._peek_cluster())
                await grpc_server.stop(self.config.shutdown_grace_s)
                self._reason, self._wake = "", asyncio.Event()
                self._refresh_mode()
            if wyoming is not None:
                await wyoming.stop()
            await self._shutdown(grpc_server, health_servicer, advertiser)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 0

    async def _start_wyoming(self, advertiser: Advertiser | None):
        from pacd.wyoming import WyomingServer

        c = self.config
        wyoming = WyomingServer(self, c.wyoming_host or c.host, c.wyoming_port, c.wyoming_model, c.wyoming_languages)
        port = await wyoming.start()
        self._out(f"pacd Wyoming conversation service on {wyoming.host}:{port}")
        if advertiser:
            host = wyoming.host if wyoming.host not in ("0.0.0.0", "::", "") else self._advertised_host()
            await advertiser.add_wyoming(self.record(), port, host)
        return wyoming

    def _announce(self) -> None:
        if self.mode == "insecure":
            log.warning("INSECURE MODE: no TLS, no authentication; any local process can call this "
                        "daemon. For development on loopback only.")
        if self.config.port_file:
            self.config.port_file.write_text(f"{self.port}\n")
        self._out(f"pacd listening on {self.config.host}:{self.port}")
        log.info("node %s listening on %s:%d (%s)", self.node_id, self.config.host, self.port, self.mode)
        if self.pairing:
            self.pairing.show_code()
        notify.ready(f"serving on port {self.port} ({self.mode})")
        if self.config.warm_up:
            threading.Thread(target=warm_up, name="pacd-warm-up", daemon=True).start()

    def _advertised_host(self) -> str | None:
        host = self.config.host
        return host if host not in ("0.0.0.0", "::", "") else None

    def _peek_cluster(self) -> str:
        return load_identity(self.state.root).cluster_id

    async def _shutdown(self, grpc_server, health_servicer, advertiser: Advertiser | None) -> None:
        log.info("shutting down (%s)", self._reason)
        notify.stopping(self._reason)
        await server.mark_serving(health_servicer, self.service_names, False)
        if advertiser:
            await advertiser.close()
        await grpc_server.stop(self.config.shutdown_grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for hook in self._shutdown_hooks:
            try:
                await hook()
            except Exception:  # one failing hook must not keep the others from running
                log.exception("shutdown hook failed")
        log.info("stopped")
