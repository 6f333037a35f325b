"""A daemon's bounded buffer of received tensors, waiting for the local stage to take them.

A sender's stream first reserves room for its tensor; while the buffer is full the servicer does not read
the stream, so gRPC's flow control stops the sender (a slow receiver slows the sender instead of filling
memory). A reservation that cannot be had before the sender's deadline, or a tensor larger than the whole
buffer, is refused with BufferFull, whose message says what holds the room.
"""

from __future__ import annotations

import asyncio
import math

import torch

from pac.errors import PacError
from pac.wire import DTYPES, TensorHeader

TensorKey = tuple[str, int, int, str]  # (job_id, step, micro_batch, kind)
DEFAULT_BUFFER_BYTES = 1024 * 1024 * 1024


class BufferFull(PacError, RuntimeError):
    """The receive buffer could not take a tensor in time."""


class DuplicateTensor(PacError, RuntimeError):
    """A tensor with the same (job, step, micro-batch, kind) is already held or arriving."""


class TensorNotReceived(PacError, TimeoutError):
    """A stage asked for a tensor that did not arrive in time."""


def held_bytes(header: TensorHeader) -> int:
    """Room a tensor takes once decoded (the payload itself is transient)."""
    return math.prod(header.shape) * DTYPES[header.dtype].itemsize


class TensorInbox:
    def __init__(self, limit_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        if limit_bytes < 1:
            raise ValueError("limit_bytes must be >= 1")
        self.limit_bytes = limit_bytes
        self._used = 0
        self._arriving: dict[TensorKey, int] = {}
        self._held: dict[TensorKey, tuple[TensorHeader, torch.Tensor]] = {}
        self._changed = asyncio.Condition()

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._held)

    async def reserve(self, header: TensorHeader, timeout_s: float) -> None:
        """Wait for room for `header`'s tensor; BufferFull when it does not come within timeout_s."""
        size = held_bytes(header)
        key = header.key
        if size > self.limit_bytes:
            raise BufferFull(
                f"tensor {header.key_text()} needs {size} bytes, more than this daemon's whole receive "
                f"buffer ({self.limit_bytes} bytes); use smaller micro-batches or a larger receive buffer"
            )
        if key in self._held or key in self._arriving:
            raise DuplicateTensor(f"tensor {header.key_text()} was already received and not yet taken")
        self._arriving[key] = 0

        def fits() -> bool:
            return self._used + size <= self.limit_bytes

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(fits), max(timeout_s, 0.0))
        except TimeoutError:
            del self._arriving[key]
            raise BufferFull(
                f"receive buffer full for {timeout_s:.1f} s: tensor {header.key_text()} needs {size} bytes, "
                f"{self._used} of {self.limit_bytes} are held by {len(self._held)} tensors not yet taken "
                f"(oldest: {self._oldest_text()}); the receiving stage is not consuming"
            ) from None
        except BaseException:
            del self._arriving[key]
            raise
        self._arriving[key] = size
        self._used += size

    def _oldest_text(self) -> str:
        for header, _ in self._held.values():
            return header.key_text()
        return "none, all room is reserved by tensors still arriving"

    async def deliver(self, header: TensorHeader, tensor: torch.Tensor) -> None:
        """Store a tensor whose room was reserved."""
        key = header.key
        self._arriving.pop(key)
        self._held[key] = (header, tensor)
        async with self._changed:
            self._changed.notify_all()

    async def cancel(self, header: TensorHeader) -> None:
        """Give back the room of a tensor whose stream broke."""
        size = self._arriving.pop(header.key, 0)
        self._used -= size
        async with self._changed:
            self._changed.notify_all()

    async def take(self, key: TensorKey, timeout_s: float) -> tuple[TensorHeader, torch.Tensor]:
        """Remove and return a received tensor, waiting up to timeout_s for it to arrive."""
        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: key in self._held), max(timeout_s, 0.0))
        except TimeoutError:
            job, step, micro_batch, kind = key
            state = "is still arriving" if key in self._arriving else "never arrived"
            raise TensorNotReceived(
                f"tensor job={job} step={step} micro_batch={micro_batch} kind={kind} {state} within "
                f"{timeout_s:.1f} s; is the sending stage running and pointed at this daemon?"
            ) from None
        header, tensor = self._held.pop(key)
        self._used -= held_bytes(header)
        async with self._changed:
            self._changed.notify_all()
        return header, tensor

    def drop_job(self, job_id: str) -> int:
        """Forget every held tensor of a job (the job ended or failed); returns how many."""
        keys = [key for key in self._held if key[0] == job_id]
        for key in keys:
            header, _ = self._held.pop(key)
            self._used -= held_bytes(header)
        return len(keys)
