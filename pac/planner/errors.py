"""Errors the planner raises on purpose. Each message names what is wrong and how to fix it."""

from __future__ import annotations

from pac.errors import ConfigError, PacError


class ProfileError(ConfigError):
    """A profile (device, link or model) that is missing a field or holds a value out of range."""


class InfeasibleError(PacError):
    """No plan fits the devices' memory or disk budgets; the message says what would make it fit."""
