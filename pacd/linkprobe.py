"""Timing a link to a peer: round trip of empty calls and one-way bandwidth of large ones."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

Echo = Callable[[bytes, int], Awaitable[None]]  # (payload, reply_bytes) -> one round trip


async def measure_link(echo: Echo, payload_bytes: int, rounds: int) -> tuple[float, float]:
    """(median round-trip seconds, median bandwidth bytes/s) over `rounds`; the first call warms up."""
    await echo(b"", 0)
    rtts = []
    for _ in range(rounds):
        started = time.perf_counter()
        await echo(b"", 0)
        rtts.append(time.perf_counter() - started)
    rtt = statistics.median(rtts)
    payload = bytes(payload_bytes)
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        await echo(payload, 0)
        elapsed = max(time.perf_counter() - started - rtt, 1e-6)
        rates.append(payload_bytes / elapsed)
    return rtt, statistics.median(rates)
