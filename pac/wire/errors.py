"""Errors of the wire format; each message says what was wrong and with which tensor."""


class WireError(ValueError):
    """A header or payload that does not describe a valid tensor (bad dtype, shape, codec or size)."""
