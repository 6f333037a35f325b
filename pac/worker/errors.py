"""The errors of a training job on a device (no PyTorch: the daemon maps them to statuses before any job)."""

from __future__ import annotations

from pac.errors import PacError


class JobError(PacError):
    """A training job on this device cannot go on; the message says why."""


class JobStateError(JobError):
    """The device does not hold what a request of the job needs (no such job, stage or phase)."""
