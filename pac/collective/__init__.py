"""Collective operations among a group of daemons: ring AllReduce with bucketing and deadlines.

Pure logic, no grpc: the ring talks to a `RingTransport` (pac/collective/transport.py); pac/net supplies
the gRPC one, tests use the in-memory one.
"""

from pac.collective.bucket import BucketPlan, pack, plan_buckets, unpack, unpack_into
from pac.collective.errors import CollectiveError, CollectiveTimeout, GroupMismatch, InvalidGroup, PeerFailed
from pac.collective.group import RingGroup
from pac.collective.ring import allreduce, allreduce_, layout_fingerprint, ring_allreduce_flat
from pac.collective.schedule import bus_bytes, partition, ring_steps, segments
from pac.collective.transport import MemoryHub, RingLink, RingMessage, RingOpen, RingTransport, check_open

__all__ = [
    "BucketPlan",
    "CollectiveError",
    "CollectiveTimeout",
    "GroupMismatch",
    "InvalidGroup",
    "MemoryHub",
    "PeerFailed",
    "RingGroup",
    "RingLink",
    "RingMessage",
    "RingOpen",
    "RingTransport",
    "allreduce",
    "allreduce_",
    "bus_bytes",
    "check_open",
    "layout_fingerprint",
    "pack",
    "partition",
    "plan_buckets",
    "ring_allreduce_flat",
    "ring_steps",
    "segments",
    "unpack",
    "unpack_into",
]
