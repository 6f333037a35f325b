"""The controller process's own memory: what it costs before any weight, and its peak."""

from __future__ import annotations

import sys


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far: VmHWM on Linux (getrusage's ru_maxrss would carry the
    parent's peak across fork and exec), else ru_maxrss; 0 where neither is known."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux kilobytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except (ImportError, OSError):
        return 0


def process_overhead() -> int:
    """This process's memory with the model code loaded and no weights (what the planner adds to the
    controller's own use)."""
    import psutil

    from pac.models.imports import MODEL_CODE

    with MODEL_CODE:
        import transformers  # noqa: F401
    return psutil.Process().memory_info().rss
