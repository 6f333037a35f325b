"""The header that travels in front of every tensor, and the cutting of payloads into chunks."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass

from pac.limits import MAX_CHUNK_BYTES
from pac.wire.codecs import codec_for
from pac.wire.dtypes import DTYPES
from pac.wire.errors import WireError


class TensorKind(enum.StrEnum):
    """What a tensor is to the pipeline, so a receiver can ask for exactly the one it needs."""

    HIDDEN = "hidden"  # backbone hidden state h_y, forward
    SIDE = "side"  # side-network activation a_y, forward
    SIDE_GRAD = "side_grad"  # gradient of a_y, backward
    ENCODER_HIDDEN = "encoder_hidden"  # the backbone encoder's output, forward to decoder stages
    SIDE_MEMORY = "side_memory"  # the side encoder's output, forward to side decoder stages
    SIDE_MEMORY_GRAD = "side_memory_grad"  # gradient of the side encoder's output, backward
    LABELS = "labels"  # targets that the last stage needs
    MASK = "mask"  # attention mask travelling with the activations
    GRADIENT = "gradient"  # a parameter gradient (collectives)
    OTHER = "other"


@dataclass(frozen=True)
class TensorHeader:
    """Everything a receiver needs to check and rebuild a tensor before its bytes arrive."""

    job_id: str  # the job this tensor belongs to; buffers and errors are per job
    step: int  # optimizer step (mini-batch index) within the job
    micro_batch: int  # micro-batch index within the step
    kind: TensorKind  # which tensor of the micro-batch this is
    dtype: str  # wire name of the tensor's dtype (a key of DTYPES); the decoded tensor has this dtype
    shape: tuple[int, ...]  # the tensor's shape
    codec: str  # how the payload is encoded: "none", "fp16" or "int8" (see pac/wire/codecs.py)
    payload_bytes: int  # length of the encoded payload; must equal what the codec gives for dtype+shape

    def __post_init__(self) -> None:
        where = f"tensor {self.key_text()}"
        if not self.job_id:
            raise WireError("tensor header has an empty job_id")
        if self.step < 0 or self.micro_batch < 0:
            raise WireError(f"{where}: step and micro_batch must be >= 0")
        if self.dtype not in DTYPES:
            raise WireError(f"{where}: unknown dtype {self.dtype!r}; supported: {', '.join(DTYPES)}")
        if any(d < 0 for d in self.shape):
            raise WireError(f"{where}: negative dimension in shape {list(self.shape)}")
        codec = codec_for(self.codec)
        codec.check_dtype(self.dtype)
        expected = codec.payload_bytes(self.dtype, self.shape)
        if self.payload_bytes != expected:
            raise WireError(
                f"{where}: payload_bytes is {self.payload_bytes} but codec {self.codec} gives {expected} "
                f"for {self.dtype} {list(self.shape)}"
            )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def key(self) -> tuple[str, int, int, str]:
        """What a receiver asks for: (job, step, micro-batch, kind)."""
        return (self.job_id, self.step, self.micro_batch, str(self.kind))

    def key_text(self) -> str:
        return f"job={self.job_id} step={self.step} micro_batch={self.micro_batch} kind={self.kind}"

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.payload_bytes // MAX_CHUNK_BYTES))


def chunks(payload: memoryview, max_bytes: int = MAX_CHUNK_BYTES) -> Iterator[memoryview]:
    """Cut a payload into consecutive slices of at most max_bytes; an empty payload gives one empty chunk."""
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    view = memoryview(payload).cast("B")
    if len(view) == 0:
        yield view
        return
    for start in range(0, len(view), max_bytes):
        yield view[start : start + max_bytes]


class PayloadAssembler:
    """Collects a header's chunks into one buffer, refusing more or fewer bytes than the header promised."""

    def __init__(self, header: TensorHeader) -> None:
        self.header = header
        self._buffer = bytearray(header.payload_bytes)
        self._filled = 0

    def add(self, data: bytes | memoryview) -> None:
        size = len(data)
        if size > MAX_CHUNK_BYTES:
            raise WireError(f"tensor {self.header.key_text()}: chunk of {size} bytes is over {MAX_CHUNK_BYTES}")
        end = self._filled + size
        if end > len(self._buffer):
            raise WireError(
                f"tensor {self.header.key_text()}: chunks carry more than the {len(self._buffer)} bytes "
                "its header announced"
            )
        self._buffer[self._filled : end] = data
        self._filled = end

    @property
    def complete(self) -> bool:
        return self._filled == len(self._buffer)

    def payload(self) -> bytearray:
        if not self.complete:
            raise WireError(
                f"tensor {self.header.key_text()}: stream ended after {self._filled} of "
                f"{len(self._buffer)} bytes"
            )
        return self._buffer
