"""What an idle daemon holds, and what its first job pays for holding little.

    .venv/bin/python -m bench.idle --json bench/results/idle.json

For each mode (`pacd serve` as installed, and with `--warm-up`), a fresh insecure daemon on 127.0.0.1:
its resident memory (VmRSS) `--settle` seconds after it listens, then a one-epoch job on it (minilm,
8 examples, one stage of all 6 layers: the smallest job that loads a stage and trains), timed end to end
by the controller, and the daemon's resident memory after it. The daemon's own log lines about importing
and loading are kept. Each mode runs in a fresh controller process (which pays its own imports alike), one
after the other; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pac.cluster.context import Device, RunOptions
from pac.cluster.controller import run_training
from pac.cluster.local import pacd_args, wait_for_port
from pac.cluster.measure import fixed_plan
from pac.jobfile import parse_job
from pac.planner.workload import TrainingJob

ROWS = [{"text": ("good " if i % 2 else "bad ") * (1 + i % 3) + f"item{i}", "label": i % 2} for i in range(8)]


def resident_mib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) // 1024


def one(where: Path, warm_up: bool, model: str, settle_s: float) -> dict:
    where.mkdir(parents=True)
    (where / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    port_file, log_path = where / "port", where / "pacd.log"
    args = pacd_args(where / "state", port_file, "2GiB", False, extra=("--warm-up",) if warm_up else ())
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        port = wait_for_port(process, port_file, time.monotonic() + 60)
        if port is None:
            raise SystemExit(f"pacd did not start:\n{log_path.read_text()}")
        time.sleep(settle_s)
        idle = resident_mib(process.pid)
        device = Device((where / "state" / "node_id").read_text().strip(), f"127.0.0.1:{port}", "localhost")
        job = parse_job({
            "model": {"name_or_path": model}, "data": {"train": str(where / "data.jsonl"), "task": "classification"},
            "training": {"epochs": 1, "batch_size": 4, "seq_len": 32},
            "cache": {"precision": "fp16", "directory": str(where / "cache")},
            "devices": {"mode": "list", "addresses": [device.address], "insecure": True},
            "output": {"directory": str(where / "out")},
        }, source=str(where / "job.toml"))
        plan = fixed_plan(model, TrainingJob(samples=len(ROWS), batch_size=4, epochs=1),
                          [(0, 6, [device.node_id], [1])], micro_batches=1, phase2_shares={device.node_id: 1})
        started = time.perf_counter()
        run_training(job, [device], None, where / "out", RunOptions(), log_line=lambda line: None, plan=plan)
        job_s = time.perf_counter() - started
        after = resident_mib(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    said = [line.split(": ", 1)[-1] for line in log_path.read_text().splitlines()
            if any(k in line for k in ("idle:", "warm-up:", "imported on first use", "loaded in"))]
    return {"mode": "warm-up" if warm_up else "default", "idle_resident_mib": idle, "job_s": round(job_s, 2),
            "after_job_resident_mib": after, "daemon_said": said}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="a 6-layer model the stage holds whole (default minilm)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after listening before reading VmRSS")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--only", choices=("default", "warm-up"), help=argparse.SUPPRESS)  # one mode, this process
    options = parser.parse_args()
    if options.only:
        with tempfile.TemporaryDirectory(prefix="pac-idle-") as tmp:
            print(json.dumps(one(Path(tmp) / options.only, options.only == "warm-up", options.model, options.settle)))
        return
    rows = []
    for mode in ("default", "warm-up"):
        out = subprocess.run([sys.executable, "-m", "bench.idle", "--only", mode, "--model", options.model,
                              "--settle", str(options.settle)], capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    if options.json:
        options.json.write_text(json.dumps({"rows": rows, "measured": time.strftime("%Y-%m-%d")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
