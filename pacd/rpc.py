"""How servicers answer: typed errors become a gRPC status with a message a person can act on."""

from __future__ import annotations

import functools
import logging
import re

import grpc

from pac.assistant.queue import Occupied, Overloaded
from pac.errors import AdapterMismatchError, ConfigError, ModelNotFoundError, PacError
from pac.security.revocation import CertificateRefused
from pac.worker.errors import JobStateError

log = logging.getLogger(__name__)


class InvalidRequest(PacError):
    """A field of a request is malformed or out of range; the message names the field."""


class NotReady(PacError):
    """The device cannot do this in its current state (for example: not paired, already paired)."""


_STATUS = [
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Occupied, grpc.StatusCode.UNAVAILABLE),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.FAILED_PRECONDITION),
    (JobStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (CertificateRefused, grpc.StatusCode.FAILED_PRECONDITION),
    (AdapterMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def status_for(error: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def handler(method):
    """Wrap a unary servicer method: expected errors abort with their status, unexpected ones with
    INTERNAL (logged with a traceback, the daemon keeps serving)."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except (PacError, PermissionError, MemoryError) as error:
            await context.abort(status_for(error), str(error))
        except Exception as error:  # the last edge: a bug must not take the daemon down
            if isinstance(error, grpc.aio.AbortError):
                raise
            log.exception("%s failed", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {error}")

    return wrapper


def check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be in {low}..{high}, got {value}")
    return value


def check_pattern(name: str, value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        raise InvalidRequest(f"{name} must be {what}, got {value[:80]!r}")
    return value
