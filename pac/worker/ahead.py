"""Phase 1 without pipeline stalls: a stage replica's frozen layers run ahead of its training.

The backbone is frozen, so the forward of its frozen layers (all of a stage's, or those below the tuned
top layers) depends on the mini-batch alone, never on the side network's or the tuned layers' weights.
`RunAhead` runs it for the mini-batches the controller queued (RunStep with `ahead`, up to the plan's
window past the one training), in a thread of its own and in step order: each micro-batch's hidden
states go on to the next stage's replicas ("A" pieces, their own streams), its cache record is written,
and the states its training forward reads wait here until that forward takes them. The device's compute
is shared through a `ComputeGate`: a training step holds it but while it waits, so the frozen forwards
fill the time the replica would otherwise wait for its neighbours, the AllReduce and the controller's
next step.

Every operation computes exactly what it computes in lock-step, on the same inputs: the result is the
same to the bit. docs/cluster.md, "Run-ahead".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pac.pipeline.backbone_stage import StageStates
from pac.pipeline.drive import ReplicaDrive
from pac.worker.errors import JobError
from pac.worker.spec import MicroIn

POLL_S = 0.5  # how often a wait for a neighbour's tensor looks whether the run-ahead was stopped


class _Stoppable:
    """A transport whose receives also give up once `stop` is set (the stage was released or reloaded)."""

    def __init__(self, transport, stop: threading.Event) -> None:
        self.transport, self.stop = transport, stop

    def send(self, *args, **kwargs) -> None:
        if self.stop.is_set():
            raise JobError("the run-ahead was stopped")
        self.transport.send(*args, **kwargs)

    def flush(self) -> None:
        self.transport.flush()

    def receive(self, stream, step, micro, kind, timeout_s):
        deadline = time.monotonic() + timeout_s
        while True:
            if self.stop.is_set():
                raise JobError("the run-ahead was stopped")
            left = deadline - time.monotonic()
            try:
                return self.transport.receive(stream, step, micro, kind, min(POLL_S, max(left, 0.01)))
            except JobError:
                if left <= POLL_S or self.transport.aborted.is_set():
                    raise


class RunAhead:
    """The frozen forwards of the queued mini-batches of one replica. `drive(step, links_transport)` makes
    the replica's drive for a step; `device_batch(micro)` moves a MicroIn's tensors to the device."""

    def __init__(self, drive: Callable[[int, object], ReplicaDrive], device_batch: Callable[[MicroIn], dict],
                 flush: Callable[[], None], transport, timeout_s: float, name: str) -> None:
        self._drive, self._device_batch, self._flush = drive, device_batch, flush
        self.timeout_s = timeout_s
        self._changed = threading.Condition()
        self._queue: dict[int, list[MicroIn]] = {}
        self._states: dict[tuple[int, int], tuple[StageStates, MicroIn]] = {}
        self._done: set[int] = set()  # steps whose every micro-batch ran and whose cache records were flushed
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._transport = _Stoppable(transport, self._stop)
        self.events: dict[int, list[dict]] = {}  # per step: the run-ahead forwards' timeline
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, step: int, micro_batches: list[MicroIn]) -> None:
        if sorted(m.index for m in micro_batches) != list(range(len(micro_batches))):
            raise JobError(f"run-ahead of step {step}: micro-batches must be numbered 0..{len(micro_batches) - 1}")
        with self._changed:
            if self._error is not None:
                raise JobError(f"the run-ahead failed: {self._error}")
            if step in self._queue or step in self._done or any(s == step for s, _ in self._states):
                raise JobError(f"step {step} was queued to run ahead twice")
            self._queue[step] = sorted(micro_batches, key=lambda m: m.index)
            self._changed.notify_all()

    def take(self, step: int, micro: int) -> tuple[StageStates, MicroIn]:
        """The states micro-batch `micro` of `step` computed ahead (on this replica's rows of it) and the
        micro-batch as queued (its rows' tensors: the step's RunStep does not send them again),
        waiting for them; they are handed out once."""
        key = (step, micro)
        with self._changed:
            if not self._wait(lambda: key in self._states or self._error is not None or self._stop.is_set()):
                queued = step in self._queue or any(s == step for s, _ in self._states)
                raise JobError(f"the frozen layers of step {step} micro-batch {micro} did not run ahead within "
                               f"{self.timeout_s:g} s" + ("" if queued else " (the step was never queued with "
                                                             "RunStep ahead)"))
            if key in self._states:
                return self._states.pop(key)
            if self._error is not None:
                raise JobError(f"the run-ahead failed: {self._error}")
            raise JobError("the run-ahead was stopped")

    def wait_flushed(self, step: int) -> list[dict]:
        """Wait until `step`'s cache records are flushed; its run-ahead timeline."""
        with self._changed:
            if not self._wait(lambda: step in self._done or self._error is not None):
                raise JobError(f"the run-ahead of step {step} did not finish within {self.timeout_s:g} s")
            if step not in self._done:
                raise JobError(f"the run-ahead failed: {self._error}")
            self._done.discard(step)
            return self.events.pop(step, [])

    def _wait(self, done: Callable[[], bool]) -> bool:
        """Wait (holding `_changed`) until `done()`, at most timeout_s; JobError once the job is stopped."""
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if self._transport.transport.aborted.is_set():
                raise JobError("the job was stopped")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.wait(min(POLL_S, left))
        return True

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._queue.clear()
            self._states.clear()
            self._changed.notify_all()

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._stop.is_set())
                if self._stop.is_set():
                    return
                step = min(self._queue)
                micro_batches = self._queue.pop(step)
            try:
                self._run(step, micro_batches)
            except BaseException as error:  # handed to the training thread's take()
                with self._changed:
                    self._error = error
                    self._changed.notify_all()
                return

    def _run(self, step: int, micro_batches: list[MicroIn]) -> None:
        drive = self._drive(step, self._transport)
        events = []
        for micro in micro_batches:
            if self._stop.is_set():
                return
            start, stop = drive.own(micro.rows)
            if start == stop:
                continue  # no rows of it here: the step skips it too
            began = time.time()
            states = drive.ahead(step, micro.index, micro.rows, lambda m=micro: self._device_batch(m), micro)
            if not drive.worker.module.side.spec.has_blocks:
                states.taps = {}  # nothing reads them any more: the cache record is written
            events.append({"op": "A", "micro": micro.index, "start_s": began, "end_s": time.time()})
            with self._changed:
                self._states[(step, micro.index)] = (states, micro)
                self._changed.notify_all()
        self._transport.flush()  # its hidden states delivered (the step's own flush waits only for its sends)
        self._flush()
        with self._changed:
            self._done.add(step)
            self.events[step] = events
            self._changed.notify_all()
