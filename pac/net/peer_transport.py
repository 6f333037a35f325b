"""pac.worker.stage.Transport over the daemon's PeerNode, for a job's code running in a worker thread."""

from __future__ import annotations

import asyncio
import threading
import time

import torch

from pac.net.node import PeerNode, SyncPeer
from pac.net.tensor_inbox import TensorNotReceived
from pac.worker.errors import JobError

POLL_S = 0.5  # a wait for a tensor is cut in slices this long, so that stopping a job is not held up


class PeerTransport:
    """Sends start at once and overlap with the next compute; `flush()` waits for them."""

    def __init__(self, node: PeerNode, loop: asyncio.AbstractEventLoop, job_id: str) -> None:
        self.peer, self.job_id = SyncPeer(node, loop), job_id
        self.aborted = threading.Event()
        self._pending: list = []
        self.send_timeout_s = 120.0

    def branch(self) -> PeerTransport:
        """The same job's transport for another thread: its own sends to flush, the same stop."""
        other = PeerTransport.__new__(PeerTransport)
        other.peer, other.job_id, other.aborted = self.peer, self.job_id, self.aborted
        other._pending, other.send_timeout_s = [], self.send_timeout_s
        return other

    def send(self, target, tensor, *, stream, step, micro, kind, codec) -> None:
        """Start delivering; `flush()` waits for every delivery (sends overlap with the next compute)."""
        if self.aborted.is_set():
            raise JobError(f"job {self.job_id} was stopped")
        self._pending.append(asyncio.run_coroutine_threadsafe(self.peer.node.send_tensor(
            target, tensor, job_id=stream, step=step, micro_batch=micro, kind=kind, codec=codec,
            timeout_s=self.send_timeout_s), self.peer.loop))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        errors = []
        for future in pending:
            try:
                self._result(future)  # a send to a lost peer does not hold up stopping the job
            except JobError:
                raise
            except Exception as error:  # the first one is reported; the rest are waited for
                errors.append(error)
        if errors:
            raise JobError(f"job {self.job_id}: {errors[0]}")

    def _result(self, future):
        """`future`'s result, waited for in slices; JobError (and the future cancelled) once the job is
        stopped."""
        while True:
            try:
                return future.result(timeout=POLL_S)
            except TimeoutError:
                if self.aborted.is_set():
                    future.cancel()
                    raise JobError(f"job {self.job_id} was stopped") from None

    def receive(self, stream, step, micro, kind, timeout_s) -> torch.Tensor:
        deadline = time.monotonic() + timeout_s
        while True:  # in slices, so that stopping the job is not held up by a wait
            if self.aborted.is_set():
                raise JobError(f"job {self.job_id} was stopped")
            left = deadline - time.monotonic()
            try:
                return self.peer.receive_tensor(stream, step, micro, kind, min(POLL_S, max(left, 0.01)))
            except TensorNotReceived:
                if left <= POLL_S:
                    raise JobError(f"job {self.job_id}: tensor {kind} of step {step} micro-batch {micro} "
                                   f"({stream}) did not arrive within {timeout_s:g} s; is the device that "
                                   f"sends it still running?") from None

    def allreduce_(self, tensors, group, op_id) -> None:
        """The group's ring AllReduce; waited for in slices, and cancelled once the job is stopped (a
        member that was lost would hold it until the group's timeout)."""
        if self.aborted.is_set():
            raise JobError(f"job {self.job_id} was stopped")
        self._result(asyncio.run_coroutine_threadsafe(self.peer.node.allreduce_(tensors, group, op_id), self.peer.loop))
