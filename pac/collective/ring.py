"""Ring AllReduce (reduce-scatter, then all-gather) of flat buffers over a RingLink.

Each step's chunk is cut into segments; a rank forwards a segment as soon as it has reduced (or, in the
all-gather, received) it, so sending and receiving overlap across the whole operation instead of meeting
at a barrier after every step. `allreduce` is the entry point: it buckets the tensors, runs the ring per
bucket under the group's deadline, and turns a missed deadline or a broken neighbour into one clear error.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from pac.collective.bucket import BucketPlan, pack, plan_buckets, unpack_into
from pac.collective.errors import CollectiveError, CollectiveTimeout, GroupMismatch
from pac.collective.group import RingGroup
from pac.collective.schedule import partition, ring_steps, segment_elements, segments
from pac.collective.transport import RingLink, RingMessage, RingTransport

REDUCIBLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class Progress:
    """Where an operation is, so that a timeout can say who it was waiting for."""

    bucket: int = 0
    step: int = 0
    waiting_for: str = "connecting to the next rank"
    started: float = field(default_factory=time.monotonic)


def _bytes_of(view: torch.Tensor) -> memoryview:
    """The values' bytes, not copied: a chunk sent in the reduce-scatter is next written when the all-gather
    brings it back, which cannot happen before the next rank has received what is sent here."""
    if view.numel() == 0:
        return memoryview(b"")
    return memoryview(view.view(torch.uint8).numpy())


def _tensor_of(payload, dtype: torch.dtype, count: int) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=dtype)
    with warnings.catch_warnings():  # read-only payloads are only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(payload, dtype=dtype, count=count)


# numpy for the hot loop where it can: torch would hand 1 MiB adds to its OpenMP pool, whose idle workers
# then spin on the cores that the network I/O (here and in the other daemons on the machine) needs.
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


def _accumulate(target: torch.Tensor, payload) -> None:
    if target.numel() == 0:
        return
    numpy_dtype = _NUMPY_DTYPES.get(target.dtype)
    if numpy_dtype is None:
        target.add_(_tensor_of(payload, target.dtype, target.numel()))
        return
    values = target.numpy()
    values += np.frombuffer(payload, dtype=numpy_dtype, count=target.numel())


def _overwrite(target: torch.Tensor, payload) -> None:
    if target.numel() == 0:
        return
    raw = target.view(torch.uint8).numpy()
    raw[:] = np.frombuffer(payload, dtype=np.uint8, count=raw.size)


_WIRE = {"bf16": torch.bfloat16, "fp16": torch.float16}


class _Codec:
    """How a flat buffer's values travel: as they are, or (a 16-bit wire) rounded to bf16 / fp16 on the
    way out and widened to the buffer's dtype on the way in, so every sum is still taken in float32."""

    def __init__(self, flat: torch.Tensor, wire: str) -> None:
        self.flat = flat
        self.dtype = _WIRE[wire] if wire != "fp32" and flat.dtype == torch.float32 else None
        self.itemsize = torch.empty(0, dtype=self.dtype).element_size() if self.dtype else flat.element_size()

    def encode(self, a: int, b: int) -> memoryview:
        if self.dtype is None:
            return _bytes_of(self.flat[a:b])
        return _bytes_of(self.flat[a:b].to(self.dtype))

    def accumulate(self, a: int, b: int, payload) -> None:
        if self.dtype is None:
            _accumulate(self.flat[a:b], payload)
        elif b > a:
            self.flat[a:b].add_(_tensor_of(payload, self.dtype, b - a).to(self.flat.dtype))

    def overwrite(self, a: int, b: int, payload) -> None:
        if self.dtype is None:
            _overwrite(self.flat[a:b], payload)
        elif b > a:
            self.flat[a:b].copy_(_tensor_of(payload, self.dtype, b - a))

    def round(self, a: int, b: int) -> None:
        """The reduced chunk this rank owns, as the others will receive it: every rank ends with the same
        values (the replicas of a stage must step alike)."""
        if self.dtype is not None:
            self.flat[a:b].copy_(self.flat[a:b].to(self.dtype))


async def ring_allreduce_flat(
    flat: torch.Tensor, group: RingGroup, link: RingLink, bucket: int, progress: Progress
) -> None:
    """Sum `flat` (1-D, contiguous, CPU) in place across the group."""
    n = group.world_size
    if n == 1:
        return
    codec = _Codec(flat, group.wire)
    per_segment = segment_elements(flat.numel(), n, flat.element_size(), group.segment_bytes)
    chunks = partition(flat.numel(), n)
    steps = ring_steps(group.rank, n)
    last = steps[-1].index
    last_reduce = max(step.index for step in steps if step.reduce)
    ready: asyncio.Queue[bytes] = asyncio.Queue()  # payloads to forward, in the order the sender needs

    async def sender() -> None:
        first = steps[0]
        for k, (a, b) in enumerate(segments(*chunks[first.send_chunk], per_segment)):
            await link.send(RingMessage(bucket, first.index, k, codec.encode(a, b)))
        for step in steps[1:]:
            for k in range(len(segments(*chunks[step.send_chunk], per_segment))):
                payload = await ready.get()
                await link.send(RingMessage(bucket, step.index, k, payload))

    async def receiver() -> None:
        for step in steps:
            progress.step = step.index
            for k, (a, b) in enumerate(segments(*chunks[step.recv_chunk], per_segment)):
                progress.waiting_for = f"data from {group.describe(group.prev_rank)}"
                message = await link.recv()
                progress.waiting_for = "local work"
                if (message.bucket, message.step, message.segment) != (bucket, step.index, k):
                    raise GroupMismatch(
                        f"{group.describe()} expected bucket {bucket} step {step.index} segment {k} from "
                        f"{group.describe(group.prev_rank)}, got bucket {message.bucket} step {message.step} "
                        f"segment {message.segment}; members disagree on the tensors or segment size"
                    )
                if len(message.payload) != (b - a) * codec.itemsize:
                    raise GroupMismatch(
                        f"{group.describe()}: segment of {len(message.payload)} bytes from "
                        f"{group.describe(group.prev_rank)}, expected {(b - a) * codec.itemsize}"
                    )
                if step.reduce:
                    codec.accumulate(a, b, message.payload)
                    if step.index == last_reduce:
                        codec.round(a, b)
                    if step.index < last:
                        ready.put_nowait(codec.encode(a, b))
                else:
                    codec.overwrite(a, b, message.payload)
                    if step.index < last:
                        ready.put_nowait(message.payload)

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(sender())
        tasks.create_task(receiver())


def layout_fingerprint(plans: list[BucketPlan], wire: str = "fp32") -> str:
    """Short digest of the bucket layout; members compare it before exchanging any value."""
    text = ";".join(f"{plan.dtype}:{plan.numel}:{len(plan.slots)}" for plan in plans)
    text += f";{wire}" if wire != "fp32" else ""  # members on other wires must not exchange a value
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def allreduce(
    tensors: list[torch.Tensor], group: RingGroup, op_id: int, transport: RingTransport
) -> list[torch.Tensor]:
    """Sum every tensor elementwise across the group; returns new tensors, the inputs stay as they were.

    Every member calls this with the same group (its own rank), the same op_id and tensors of the same
    dtypes and sizes in the same order. Raises CollectiveTimeout when the group's step deadline passes and
    PeerFailed when a neighbour breaks off; never waits longer than the deadline.
    """
    copies = [tensor.detach().clone() for tensor in tensors]
    await allreduce_(copies, group, op_id, transport)
    return copies


async def allreduce_(tensors: list[torch.Tensor], group: RingGroup, op_id: int, transport: RingTransport) -> None:
    """In-place `allreduce`: each tensor ends up holding the group's sum (like torch.distributed.all_reduce).

    A contiguous CPU tensor that fills a bucket alone is reduced where it lies; smaller ones are packed.
    """
    for index, tensor in enumerate(tensors):
        if tensor.dtype not in REDUCIBLE_DTYPES:
            raise GroupMismatch(f"tensor {index} has dtype {tensor.dtype}; AllReduce sums floating-point tensors")
    if group.world_size == 1:
        return
    plans = plan_buckets(tensors, group.bucket_bytes)
    progress = Progress()
    where = f"AllReduce op {op_id} of group {group.group_id} ({group.describe()}, world size {group.world_size})"
    link: RingLink | None = None
    try:
        async with asyncio.timeout(group.step_timeout_s):
            link = await transport.open(group, op_id, layout_fingerprint(plans, group.wire))
            for index, plan in enumerate(plans):
                progress.bucket = index
                flat = _direct_view(tensors, plan)
                packed = flat is None
                if packed:
                    flat = pack(tensors, plan)
                await ring_allreduce_flat(flat, group, link, index, progress)
                if packed:
                    unpack_into(flat, plan, tensors)
            progress.waiting_for = f"{group.describe(group.next_rank)} to take the last data"
            await link.finish()
    except BaseException as raw:
        exc = _first_error(raw)
        if link is not None:
            await _abort_quietly(link, f"{group.describe()} failed: {exc}")
        if isinstance(exc, TimeoutError) and not isinstance(exc, CollectiveError):
            raise CollectiveTimeout(
                f"{where} missed its {group.step_timeout_s:g} s deadline at bucket {progress.bucket} step "
                f"{progress.step} while waiting for {progress.waiting_for}: that member died or stalled, or "
                "the network is slower than the deadline allows"
            ) from None
        if isinstance(exc, CollectiveError | asyncio.CancelledError):
            raise exc from None
        raise CollectiveError(f"{where} failed: {exc}") from exc


def _direct_view(tensors: list[torch.Tensor], plan: BucketPlan) -> torch.Tensor | None:
    """A flat view of the bucket's only tensor when it can be reduced in place, else None."""
    if len(plan.slots) != 1:
        return None
    tensor = tensors[plan.slots[0].tensor_index]
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.requires_grad:
        return None
    return tensor.view(-1)


async def _abort_quietly(link: RingLink, reason: str) -> None:
    try:
        async with asyncio.timeout(1.0):
            await link.abort(reason)
    except Exception:  # the operation already failed; telling the neighbours is best effort
        pass
