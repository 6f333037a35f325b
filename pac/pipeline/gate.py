"""A device's compute, shared by a stage's training step and its frozen layers run ahead.

A training step holds the compute from its start to its end, except while it waits (`waiting`: for a
neighbour's tensors, its frozen states, its sends, the AllReduce); a run-ahead forward starts only in
such a wait or between steps, and nothing is pre-empted: a step whose wait ends while a forward
computes resumes when that forward ends. Between steps the frozen forwards of the steps the window
already allowed may run, but not the one the controller queued with the step about to start (it
arrives together with that step's RunStep, which goes first), as the planner's simulator schedules it
(pac/planner/ahead.py: training first). The optimiser step and the replies run beside a forward.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class GateClosed(RuntimeError):
    """The run-ahead was stopped (the stage released or reloaded): no frozen forward starts any more."""


class ComputeGate:
    def __init__(self, window: int = 0) -> None:
        """`window`: the most mini-batches the frozen layers run ahead (the plan's run_ahead)."""
        self.window = window
        self._changed = threading.Condition()
        self._busy = False  # a step computes (outside its waits), or one run-ahead forward
        self._waiting = 0  # training steps waiting for the compute
        self._in_step = False
        self._owner: int | None = None  # the thread of the step under way
        self._yielded = False  # the step under way waits, the compute is free meanwhile
        self._next_step: int | None = None  # the step to come (None: the first run-ahead forward's)
        self._closed = False

    def _take(self) -> None:
        """Hold the compute for training (with `_changed` held), once the operation computing ends."""
        self._waiting += 1
        try:
            while self._busy:
                self._changed.wait()
        finally:
            self._waiting -= 1
        self._busy = True

    def _give(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Training step `step`: it holds the compute but for its `waiting` parts."""
        with self._changed:
            self._take()
            self._in_step, self._yielded, self._owner = True, False, threading.get_ident()
        try:
            yield
        finally:
            with self._changed:
                self._in_step = self._yielded = False
                self._busy, self._owner = False, None
                self._next_step = step + 1
                self._changed.notify_all()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Inside `step`, on its thread: the step waits for something, a run-ahead forward may compute
        meanwhile. Elsewhere (a run-ahead forward's own wait for its inputs, an in-process pipeline),
        nothing."""
        with self._changed:
            held = self._in_step and not self._yielded and self._owner == threading.get_ident()
            if held:
                self._yielded, self._busy = True, False
                self._changed.notify_all()
        try:
            yield
        finally:
            if held:
                with self._changed:
                    self._take()
                    self._yielded = False

    @contextmanager
    def background(self, step: int) -> Iterator[None]:
        """A run-ahead forward of mini-batch `step`: once nothing computes, no step waits to, and either a
        step waits for something or, between steps, `step` is within the window of the step to come."""
        with self._changed:
            if self._next_step is None:
                self._next_step = step  # the run-ahead goes in step order: its first is the first trained
            while self._busy or self._waiting or not (self._in_step or step < self._next_step + self.window):
                if self._closed:
                    raise GateClosed("the run-ahead was stopped")
                self._changed.wait()
            self._busy = True
        try:
            yield
        finally:
            self._give()

    def close(self) -> None:
        """No frozen forward starts from now on; one waiting for the compute gives up (GateClosed)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
