"""Memory a device hands back to the system once a job or a warm-up lets it go."""

from __future__ import annotations

import ctypes
import gc


def trim_heap() -> None:
    """Hand freed memory back to the system (a released job's tensors are large)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
