"""A device's compute, shared by a stage's training operations and its frozen layers run ahead.

One operation computes at a time, and the training ones go first: a run-ahead forward starts only while
no training operation is computing or waiting to, so it fills the time the replica would otherwise
wait (for a neighbour's tensors, the AllReduce, the controller's next step) and delays a training
operation by at most the one run-ahead forward already under way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ComputeGate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy = False
        self._waiting = 0  # training operations waiting for the compute

    @contextmanager
    def foreground(self) -> Iterator[None]:
        """A training operation: next once the operation computing now ends."""
        with self._changed:
            self._waiting += 1
            try:
                while self._busy:
                    self._changed.wait()
            finally:
                self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def background(self) -> Iterator[None]:
        """A run-ahead forward: only while no training operation computes or waits to."""
        with self._changed:
            while self._busy or self._waiting:
                self._changed.wait()
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()
