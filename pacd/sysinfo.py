"""Facts about this machine for NodeInfo and mDNS."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil

_CUDA_NAME = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"


def accelerator() -> str:
    """"cuda:<name>", "mps" or "cpu". Where a GPU may exist, PyTorch says whether it can use it, in a child
    process: the daemon itself holds no PyTorch until a job (it takes seconds and ~150 MB)."""
    if Path("/proc/driver/nvidia/gpus").exists() or Path("/dev/nvidia0").exists():
        try:
            found = subprocess.run([sys.executable, "-c", _CUDA_NAME], capture_output=True, text=True, timeout=120)
            name = found.stdout.strip() if found.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            name = ""
        if name:
            return f"cuda:{name}"
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
