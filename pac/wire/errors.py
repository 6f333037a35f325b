"""Errors of the wire format; each message says what was wrong and with which tensor."""

from pac.errors import PacError


class WireError(PacError, ValueError):
    """A header or payload that does not describe a valid tensor (bad dtype, shape, codec or size)."""
