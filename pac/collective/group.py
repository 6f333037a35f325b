"""Who takes part in an AllReduce: a job-scoped group, each member's rank and the ring order."""

from __future__ import annotations

from dataclasses import dataclass

from pac.collective.errors import InvalidGroup
from pac.limits import MAX_CHUNK_BYTES

MAX_SEGMENT_BYTES = MAX_CHUNK_BYTES  # a ring segment is one message
WIRE_DTYPES = ("fp32", "bf16", "fp16")  # what float32 tensors travel as on the ring


@dataclass(frozen=True)
class RingGroup:
    """One rank's view of an AllReduce group; every member holds the same group_id, members and timeout."""

    group_id: str  # job-scoped name, e.g. "<job_id>/stage0"; ops of different groups never mix
    rank: int  # this member's position in `members`
    members: tuple[str, ...]  # ring order: addresses "host:port" of the daemons; rank r sends to r+1
    step_timeout_s: float = 60.0  # deadline of one AllReduce operation (one training step), seconds
    segment_bytes: int = MAX_SEGMENT_BYTES  # most bytes per ring message (schedule.segment_elements picks the size)
    bucket_bytes: int = 32 * 1024 * 1024  # small tensors are packed into flat buckets of at most this size
    streams: int = 2  # parallel streams per ring link: gRPC's asyncio writes wait a round trip each
    wire: str = "fp32"  # float32 tensors travel as: fp32 | bf16 | fp16 (summed in float32 all the same)

    def __post_init__(self) -> None:
        if not self.group_id:
            raise InvalidGroup("AllReduce group: group_id is empty")
        if not self.members:
            raise InvalidGroup(f"AllReduce group {self.group_id}: members is empty")
        if len(set(self.members)) != len(self.members):
            raise InvalidGroup(f"AllReduce group {self.group_id}: a member appears twice in {list(self.members)}")
        if not 0 <= self.rank < len(self.members):
            raise InvalidGroup(
                f"AllReduce group {self.group_id}: rank {self.rank} is outside 0..{len(self.members) - 1}"
            )
        if self.step_timeout_s <= 0:
            raise InvalidGroup(f"AllReduce group {self.group_id}: step_timeout_s must be > 0")
        if not 0 < self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise InvalidGroup(f"AllReduce group {self.group_id}: segment_bytes must be in 1..{MAX_SEGMENT_BYTES}")
        if not 1 <= self.streams <= 16:
            raise InvalidGroup(f"AllReduce group {self.group_id}: streams must be in 1..16")
        if self.wire not in WIRE_DTYPES:
            raise InvalidGroup(f"AllReduce group {self.group_id}: wire must be one of {', '.join(WIRE_DTYPES)}, "
                               f"got {self.wire!r}")
        if self.bucket_bytes < 1:
            raise InvalidGroup(f"AllReduce group {self.group_id}: bucket_bytes must be >= 1")

    @property
    def world_size(self) -> int:
        return len(self.members)

    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % self.world_size

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % self.world_size

    def describe(self, rank: int | None = None) -> str:
        rank = self.rank if rank is None else rank
        return f"rank {rank} ({self.members[rank]})"
