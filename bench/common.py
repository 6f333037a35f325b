"""What every benchmark shares: the report shape {"bench", "machine", "config", "rows"} and memory probes."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            info["memory_total_bytes"] = int(handle.readline().split()[1]) * 1024
    except OSError:
        pass
    return info


def write_report(path: str | Path, bench: str, config: dict, rows: list[dict]) -> dict:
    report = {"bench": bench, "machine": machine_info(), "config": config, "rows": rows}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    """The process's resident set size now."""
    return _status_bytes("VmRSS")


def process_peak_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) of process `pid`; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """The process's peak resident set size since start or since the last reset_peak_rss()."""
    return _status_bytes("VmHWM")


def release_freed_memory() -> None:
    """Hand memory the allocator keeps after frees (e.g. a model loader's scratch) back to the kernel,
    so it is not counted as the next phase's resident memory (glibc malloc_trim; no-op elsewhere)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux clear_refs 5); False if not allowed."""
    release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False
