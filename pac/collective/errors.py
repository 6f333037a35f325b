"""Errors of collective operations; each names the group, the operation and the rank at fault."""

from pac.errors import PacError


class CollectiveError(PacError, RuntimeError):
    """An AllReduce that could not complete; the message says which member and what to check."""


class CollectiveTimeout(CollectiveError, TimeoutError):
    """The step's deadline passed: a member died, stalled, or the network is slower than the deadline allows."""


class PeerFailed(CollectiveError):
    """A neighbour in the ring broke its stream or gave up; the operation cannot complete."""


class GroupMismatch(CollectiveError):
    """Members disagree on the group (size, order) or on the tensors being reduced (dtypes, sizes)."""


class InvalidGroup(PacError, ValueError):
    """A group description that cannot work (empty, duplicate members, rank out of range, bad timeout)."""
