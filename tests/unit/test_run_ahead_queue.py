"""A replica's run-ahead queue (pac.worker.ahead.RunAhead) with a stand-in drive: order, hand-over, errors,
stopping."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from pac.pipeline.backbone_stage import StageStates
from pac.worker.ahead import RunAhead
from pac.worker.errors import JobError
from pac.worker.spec import MicroIn


class Drive:
    """Records the frozen forwards it is asked for; `fail_at` (step, micro) raises there."""

    def __init__(self, step: int, ran: list, fail_at=None) -> None:
        self.step, self.ran, self.fail_at = step, ran, fail_at
        self.worker = SimpleNamespace(module=SimpleNamespace(side=SimpleNamespace(spec=SimpleNamespace(has_blocks=True))))

    def own(self, rows: int) -> tuple[int, int]:
        return 0, rows

    def ahead(self, step: int, micro: int, rows: int, batch, info) -> StageStates:
        if (self.step, micro) == self.fail_at:
            raise RuntimeError("the frozen forward failed")
        self.ran.append((self.step, micro))
        return StageStates(taps={}, outbound={"step": self.step, "micro": micro})


def queue(ran: list, fail_at=None, timeout_s: float = 5.0) -> tuple[RunAhead, SimpleNamespace]:
    transport = SimpleNamespace(aborted=threading.Event(), flush=lambda: None)
    ahead = RunAhead(lambda step, links: Drive(step, ran, fail_at), lambda micro: micro.batch, lambda: None,
                     transport, timeout_s, "test-run-ahead")
    return ahead, transport


def micro_batches(count: int) -> list[MicroIn]:
    return [MicroIn(i, 2, {"x": i}) for i in range(count)]


def test_queued_steps_run_in_order_and_each_state_is_handed_out_once() -> None:
    ran: list = []
    ahead, _ = queue(ran)
    ahead.submit(4, micro_batches(2))
    ahead.submit(5, micro_batches(2))
    states, micro = ahead.take(4, 1)
    assert states.outbound == {"step": 4, "micro": 1} and micro.batch == {"x": 1}  # the tensors as queued
    assert ahead.take(4, 0)[0].outbound["micro"] == 0
    assert [e["op"] for e in ahead.wait_flushed(4)] == ["A", "A"]  # its timeline
    assert ahead.take(5, 1)[0].outbound == {"step": 5, "micro": 1}
    assert ran[:4] == [(4, 0), (4, 1), (5, 0), (5, 1)]
    with pytest.raises(JobError, match="twice"):
        ahead.submit(5, micro_batches(2))
    ahead.stop()


def test_a_failed_frozen_forward_is_reported_to_the_step_waiting_for_it() -> None:
    ahead, _ = queue([], fail_at=(7, 1))
    ahead.submit(7, micro_batches(2))
    assert ahead.take(7, 0)[0].outbound["micro"] == 0
    with pytest.raises(JobError, match="the frozen forward failed"):
        ahead.take(7, 1)
    with pytest.raises(JobError, match="failed"):
        ahead.submit(8, micro_batches(1))


def test_a_step_never_queued_times_out_naming_it_and_a_stopped_job_lets_go_at_once() -> None:
    ahead, transport = queue([], timeout_s=0.3)
    with pytest.raises(JobError, match="never queued"):
        ahead.take(3, 0)
    ahead.timeout_s = 60.0
    threading.Timer(0.2, transport.aborted.set).start()
    with pytest.raises(JobError, match="stopped"):
        ahead.take(9, 0)  # the job was released: within half a second, not after 60
    ahead.stop()
