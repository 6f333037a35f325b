"""pac.v1.Stage: a training job's phase-1 stage replica and phase-2 member on this device.

The servicer of the job's work (pacd/services/stage_servicer.py) and PyTorch are imported by the job's
first call (pacd/services/deferred.py). What touches only the job slot is answered here, so a controller
that releases, renews or asks about jobs on an idle device (a resume, `pacctl status`) imports nothing.
"""

from __future__ import annotations

import grpc

from pac.v1 import stage_pb2, stage_pb2_grpc
from pacd.rpc import InvalidRequest, handler
from pacd.services.deferred import Deferred

SERVICE_NAME = "pac.v1.Stage"


class StageService(Deferred):
    def __init__(self, daemon) -> None:
        super().__init__(daemon, "pacd.services.stage_servicer:StageServicer",
                         stage_pb2.DESCRIPTOR.services_by_name["Stage"])
        self.slot = daemon.jobs  # the one job this device holds (pac.worker.slot.JobSlot)

    @handler
    async def Release(self, request, context):
        return stage_pb2.ReleaseReply(released=await self.slot.release(request.job_id, request.keep_cache))

    @handler
    async def Renew(self, request, context):
        if not request.lease_s > 0:
            raise InvalidRequest(f"lease_s must be > 0, got {request.lease_s}")
        return stage_pb2.RenewReply(held=self.slot.renew(request.job_id, request.lease_s))

    @handler
    async def Status(self, request, context):
        if self.slot.job is None:
            return stage_pb2.StageStatusReply()
        from pac.net.convert.stage import status_to_proto  # a job is held: its code is imported already

        return status_to_proto(self.slot.job)


def register(server: grpc.aio.Server, daemon) -> list[str]:
    stage_pb2_grpc.add_StageServicer_to_server(StageService(daemon), server)
    on_shutdown = getattr(daemon, "on_shutdown", None)
    if on_shutdown is not None:
        async def hook() -> None:
            daemon.jobs.shutdown()

        on_shutdown(hook)
    return [SERVICE_NAME]
