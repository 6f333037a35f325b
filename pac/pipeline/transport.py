"""Moving tensors between stage replicas and summing gradients within a stage: the in-process stand-ins.

`InMemoryTransport` plays the daemons' TensorStream (pac.net.node send_tensor / receive_tensor): a
message is addressed by (direction, receiving stage, micro-batch, receiving replica) and carries the
rows [start, stop) of the micro-batch that one sending replica computed. `LocalGroup` plays the ring
AllReduce (pac.net.node allreduce_): every member calls its `AllReduce` from its own thread, and every
member ends with the same sum, taken in rank order.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from collections.abc import Callable

import torch

from pac.pipeline.errors import PipelineError

Key = tuple[str, int, int, int]  # ("F" | "B", receiving stage, micro-batch, receiving replica)


class InMemoryTransport:
    def __init__(self) -> None:
        self._pieces: dict[Key, list[tuple[int, dict[str, torch.Tensor]]]] = defaultdict(list)

    def send(self, key: Key, start: int, tensors: dict[str, torch.Tensor]) -> None:
        self._pieces[key].append((start, tensors))

    def arrived(self, key: Key) -> int:
        return len(self._pieces.get(key, ()))

    def take(self, key: Key, expected: int) -> dict[str, torch.Tensor]:
        """The receiver's rows, pieces joined in row order; every piece must carry the same names."""
        pieces = sorted(self._pieces.pop(key, []), key=lambda piece: piece[0])
        if len(pieces) != expected:
            raise PipelineError(f"{key}: expected {expected} pieces, got {len(pieces)}")
        names = set(pieces[0][1])
        if any(set(p[1]) != names for p in pieces):
            raise PipelineError(f"{key}: pieces carry different tensors {[sorted(p[1]) for p in pieces]}")
        return {name: torch.cat([p[1][name] for p in pieces]) for name in pieces[0][1]}


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
