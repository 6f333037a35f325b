"""Device service: who this device is, profiling models on it, and the home's revocation list."""

from __future__ import annotations

import asyncio
import time

import grpc

from pac.formats import QUANTIZATIONS
from pac.net.convert.common import node_info
from pac.net.convert.daemon import profile_to_proto
from pac.v1 import common_pb2, daemon_pb2, daemon_pb2_grpc
from pacd.profiles import MODEL_NAME_RE, ProfileKey, ProfileStore, in_thread, measure_profile
from pacd.rpc import InvalidRequest, check_pattern, check_range, handler

MAX_BATCH_SIZES = 8
MAX_BATCH_SIZE = 256
MAX_SEQ_LEN = 8192
DEFAULT_REDUCTION_FACTOR = 8


def validate_profile_request(request: daemon_pb2.ProfileRequest, node_id: str) -> ProfileKey:
    check_pattern("model", request.model, MODEL_NAME_RE, "a model name like 'minilm' or 'smollm2-135m'")
    if not request.batch_sizes:
        raise InvalidRequest("batch_sizes is empty: give at least one, e.g. [1, 4, 8]")
    sizes = tuple(sorted(set(request.batch_sizes)))
    if len(sizes) > MAX_BATCH_SIZES:
        raise InvalidRequest(f"at most {MAX_BATCH_SIZES} distinct batch_sizes, got {len(sizes)}")
    for size in sizes:
        check_range("batch_sizes[]", size, 1, MAX_BATCH_SIZE)
    check_range("seq_len", request.seq_len, 1, MAX_SEQ_LEN)
    factor = request.reduction_factor or DEFAULT_REDUCTION_FACTOR
    check_range("reduction_factor", factor, 1, 64)
    quantization = request.quantization or "none"
    if quantization not in QUANTIZATIONS:
        raise InvalidRequest(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    return ProfileKey(node_id, request.model, request.seq_len, sizes, factor, quantization)


class DeviceServicer(daemon_pb2_grpc.DeviceServicer):
    def __init__(self, daemon):
        self._daemon = daemon
        self._store = ProfileStore(daemon.state.root / "profiles")
        self._measuring = asyncio.Lock()  # one measurement at a time: they compete for the same cores

    @handler
    async def GetInfo(self, request, context) -> common_pb2.NodeInfo:
        return node_info(self._daemon.facts())

    @handler
    async def Profile(self, request, context) -> daemon_pb2.ProfileReply:
        key = validate_profile_request(request, self._daemon.node_id)
        async with self._measuring:
            stored = None if request.refresh else self._store.get(key)
            if stored is not None:
                return daemon_pb2.ProfileReply(profile=profile_to_proto(stored), from_store=True)
            started = time.perf_counter()
            stored = await in_thread(measure_profile, key, self._daemon.memory_budget, self._daemon.accelerator)
            self._store.put(key, stored)
        return daemon_pb2.ProfileReply(profile=profile_to_proto(stored), from_store=False,
                                       elapsed_s=time.perf_counter() - started)


    @handler
    async def UpdateRevocations(self, request, context) -> daemon_pb2.RevocationReply:
        return daemon_pb2.RevocationReply(number=self._daemon.update_revocations(request.crl_pem))


    @handler
    async def RenewCertificate(self, request, context) -> daemon_pb2.RenewCertificateReply:
        return daemon_pb2.RenewCertificateReply(not_after=self._daemon.renew_certificate(request.certificate_pem))


def register(server: grpc.aio.Server, daemon) -> list[str]:
    daemon_pb2_grpc.add_DeviceServicer_to_server(DeviceServicer(daemon), server)
    return [daemon_pb2.DESCRIPTOR.services_by_name["Device"].full_name]
