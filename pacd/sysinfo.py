"""Facts about this machine for NodeInfo and mDNS."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil


def accelerator() -> str:
    """"cuda:<name>", "mps" or "cpu". torch is imported only where a GPU may exist: it takes seconds."""
    if Path("/proc/driver/nvidia/gpus").exists() or Path("/dev/nvidia0").exists():
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def total_memory() -> int:
    return psutil.virtual_memory().total


def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pac")
    except PackageNotFoundError:
        return "0+unknown"


def disk_free(path) -> int:
    return psutil.disk_usage(str(path)).free
