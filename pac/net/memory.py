"""Keep the ring's message buffers in the heap instead of fresh mmaps (glibc only; a no-op elsewhere).

Every ring frame is a 1-4 MiB bytes object, made and freed hundreds of times per AllReduce. glibc serves
allocations of that size with a fresh mmap and gives the pages back on free, so each received byte first
takes a page fault and a zero-fill in the kernel: measured, about as many faults per operation as bytes
moved / 4 KiB, 10-15% of the daemons' CPU at 64 MiB. Raising the mmap threshold and the trim threshold
makes glibc reuse the same heap pages frame after frame; the price is that up to TRIM_BYTES of freed heap
stays with the process instead of going back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TRIM_BYTES = 256 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_done = False


def reuse_large_buffers() -> bool:
    """Apply the thresholds once per process; True when glibc took them."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return _done
