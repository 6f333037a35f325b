"""Stored model profiles: measured once per (device, model, shape), then reused.

A stored profile is a JSON object:

    {"node_id", "model", "seq_len", "quantization", "reduction_factor", "batch_sizes", "memory_budget_bytes",
     "accelerator", "measured_at_unix", "elapsed_s", "measurement": ModelMeasurement.to_dict()}
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pac.security.files import ensure_private_dir, write_private

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ProfileKey:
    node_id: str
    model: str
    seq_len: int
    batch_sizes: tuple[int, ...]
    reduction_factor: int
    quantization: str = "none"

    def filename(self) -> str:
        sizes = "-".join(map(str, self.batch_sizes))
        held = "" if self.quantization == "none" else f"__q{self.quantization}"
        return f"{self.node_id}__{self.model}__s{self.seq_len}__k{self.reduction_factor}__b{sizes}{held}.json"


class ProfileStore:
    """Profiles as files under the state directory (owner-only)."""

    def __init__(self, directory: Path):
        self._dir = directory

    def get(self, key: ProfileKey) -> dict[str, Any] | None:
        path = self._dir / key.filename()
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            path.unlink(missing_ok=True)  # a torn or corrupted file is measured again
            return None

    def put(self, key: ProfileKey, profile: dict[str, Any]) -> None:
        ensure_private_dir(self._dir)
        write_private(self._dir / key.filename(), json.dumps(profile, indent=1).encode())


def measure_profile(key: ProfileKey, memory_budget: int, accelerator: str) -> dict[str, Any]:
    """Run the lead's measurement (pac.profiling) and wrap it with where and how it was taken."""
    from pac import profiling

    overhead = profiling.model_code_bytes(key.model)  # what a job costs before its weights: the planner adds it
    started = time.perf_counter()
    measurement = profiling.measure(key.model, list(key.batch_sizes), key.seq_len, key.reduction_factor,
                                    quantization=key.quantization, memory_budget=memory_budget).to_dict()
    measurement["runtime_overhead_bytes"] = overhead
    from pac.worker.heap import trim_heap

    trim_heap()  # the timed model's memory goes back to the system before a job's stage is loaded
    return {"node_id": key.node_id, "model": key.model, "seq_len": key.seq_len, "quantization": key.quantization,
            "reduction_factor": key.reduction_factor, "batch_sizes": list(key.batch_sizes),
            "memory_budget_bytes": memory_budget, "accelerator": accelerator,
            "measured_at_unix": time.time(), "elapsed_s": time.perf_counter() - started,
            "measurement": measurement}


async def in_thread(function, *args):
    """Run blocking work in a daemon thread so the event loop keeps answering and a shutdown does not
    wait for it (asyncio.to_thread's pool is joined at exit; a measurement can take minutes)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def work() -> None:
        try:
            result = function(*args)
        except BaseException as error:  # handed to the awaiting coroutine, raised there
            failure = error
            loop.call_soon_threadsafe(lambda: future.done() or future.set_exception(failure))
        else:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))

    threading.Thread(target=work, name="pacd-measure", daemon=True).start()
    return await future
