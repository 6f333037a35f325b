"""Summing gradients within a stage in one process: the ring AllReduce's stand-in.

`LocalGroup` plays the ring AllReduce (pac.net.node allreduce_): every member calls its `AllReduce` from
its own thread, and every member ends with the same sum, taken in rank order. (Pieces between stages
travel by `pac.pipeline.executor.MemoryLinks`.)
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import torch

from pac.pipeline.errors import PipelineError


class LocalGroup:
    """`size` replicas of one stage in this process, summing gradients in place."""

    def __init__(self, size: int, timeout_s: float = 60.0) -> None:
        self.size = size
        self._slots: list[list[torch.Tensor] | None] = [None] * size
        self._barrier = threading.Barrier(size, timeout=timeout_s)

    def member(self, rank: int) -> Callable[[list[torch.Tensor]], None]:
        def allreduce(tensors: list[torch.Tensor]) -> None:
            self._slots[rank] = [t.clone() for t in tensors]
            self._barrier.wait()
            lengths = {len(slot) for slot in self._slots}
            if lengths != {len(tensors)}:
                raise PipelineError(f"AllReduce members sent different numbers of tensors: {sorted(lengths)}")
            for index, tensor in enumerate(tensors):
                tensor.copy_(functools.reduce(torch.add, [slot[index] for slot in self._slots]))
            self._barrier.wait()  # nobody overwrites a slot before everyone has summed

        return allreduce


def run_members(calls: list[Callable[[], None]]) -> None:
    """Run one call per group member concurrently (each in a thread) and re-raise the first error."""
    if len(calls) == 1:
        calls[0]()
        return
    errors: list[BaseException] = []

    def guarded(call):
        try:
            call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
