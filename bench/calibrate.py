"""The planner's simulator against measured runs: simulated vs measured time per mini-batch and per epoch.

    .venv/bin/python -m bench.calibrate --devices 2,3 --strategies pac,pipeline-only,data-only \
        --json bench/results/calibrate-minilm.json

For each device count, a home of that many `pacd` daemons on this machine (loopback, mutual TLS, one torch
thread each) is profiled once; then each strategy's plan is made from that profile by the planner (its
simulated phase-1 mini-batch and epoch, its simulated phase-2 epoch) and run by `pacctl train`'s controller
on the same daemons. A row compares:

- phase 1: the simulated mini-batch time with the median measured step (the first two steps, which pay
  one-time costs, left out), and the simulated epoch with the measured epoch 1;
- phase 2 (plans with a cache): the simulated epoch with the mean measured epoch from the cache.

`error` is (simulated - measured) / measured. `--network emulated` puts each daemon in its own network
namespace behind a tc-shaped link (`--link`, default 1gbit; bench/netns.py, needs root); the default is
loopback.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from bench.common import write_report

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
DATA = "../shared/data/mrpc/train.tsv"


def job_for(cluster, args, out: Path, strategy: str):
    from pac.jobfile import parse_job

    return parse_job({
        "model": {"name_or_path": args.model, "quantization": args.quantization},
        "data": {"train": str(Path(args.data).resolve()), "task": "classification", "train_limit": args.samples},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "seq_len": args.seq_len,
                     "top_layers": args.top_layers, "seed": 0},
        "cache": {"precision": "fp16", "directory": str(out / "cache")},
        "devices": {"mode": "list", "addresses": [d.address for d in cluster.daemons]},
        "output": {"directory": str(out / strategy)},
    }, source="bench.calibrate", base_dir=out)


def error(simulated: float | None, measured: float | None) -> float | None:
    if not simulated or not measured:
        return None
    return (simulated - measured) / measured


def compare(plan: dict, metrics: dict) -> dict:
    """The plan's simulated times beside the run's measured ones."""
    steps = [s for s in metrics["steps"] if s["phase"] == 1]
    settled = [s["seconds"] for s in steps[2:]] or [s["seconds"] for s in steps]
    epochs = metrics["epoch_times_s"]
    phase1, phase2 = plan["phase1"], plan.get("phase2")
    row = {"stages": [(s["first_layer"], s["end_layer"], len(s["devices"])) for s in phase1["stages"]],
           "micro_batches": phase1["micro_batches"],
           "phase1_minibatch_simulated_s": phase1["minibatch_s"],
           "phase1_minibatch_measured_s": statistics.median(settled) if settled else None,
           "phase1_epoch_simulated_s": phase1["epoch_s"], "phase1_epoch_measured_s": epochs[0] if epochs else None}
    if phase2 is not None and len(epochs) > 1:
        row |= {"phase2_devices": sum(1 for c in phase2["step_shares"].values() if c),
                "phase2_epoch_simulated_s": phase2["epoch_s"],
                "phase2_epoch_measured_s": statistics.mean(epochs[1:])}
    for what in ("phase1_minibatch", "phase1_epoch", "phase2_epoch"):
        row[f"{what}_error"] = error(row.get(f"{what}_simulated_s"), row.get(f"{what}_measured_s"))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="2,3", help="home sizes, comma-separated")
    parser.add_argument("--strategies", default="pac,pipeline-only,data-only")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--top-layers", type=int, default=0)
    parser.add_argument("--work", default="runs/bench-calibrate", help="scratch directory")
    parser.add_argument("--network", choices=("loopback", "emulated"), default="loopback")
    parser.add_argument("--link", default="1gbit", help="the emulated links' rate (tc)")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    import asyncio
    import contextlib

    import torch

    from pac.cluster.controller import RunOptions, run_training
    from pac.cluster.local import LocalCluster
    from pac.cluster.measure import measure_home, profile_sizes

    torch.set_num_threads(1)
    rows = []
    for count in (int(n) for n in args.devices.split(",")):
        out = Path(args.work).resolve() / f"devices-{count}"
        with contextlib.ExitStack() as stack:
            hosts = prefixes = None
            if args.network == "emulated":
                from bench.netns import EmulatedNetwork

                net = stack.enter_context(EmulatedNetwork(count, args.link))
                hosts, prefixes = net.hosts, [net.prefix(i) for i in range(count)]
            cluster = stack.enter_context(LocalCluster(out / "home", count, threads=1, hosts=hosts, prefixes=prefixes))
            probe = job_for(cluster, args, out, "profile")
            began = time.perf_counter()
            asyncio.run(measure_home(cluster.devices, cluster.identity, probe,
                                     profile_sizes(args.batch_size, None), lambda line: print(line, file=sys.stderr)))
            print(f"profiled {count} device(s) in {time.perf_counter() - began:.1f} s", file=sys.stderr)
            for strategy in args.strategies.split(","):
                job = job_for(cluster, args, out, strategy)
                options = RunOptions(strategy=strategy, use_cache=strategy == "pac", evaluate=False)
                metrics, controller = run_training(job, cluster.devices, cluster.identity, out / strategy, options,
                                                   log_line=lambda line, s=strategy: print(f"  [{s}] {line}",
                                                                                           file=sys.stderr))
                row = {"devices": count, "strategy": strategy, **compare(controller.plan.to_dict(), metrics)}
                rows.append(row)
                print(f"{count} devices, {strategy}: " + ", ".join(
                    f"{k} {v:+.0%}" for k, v in row.items() if k.endswith("_error") and v is not None), file=sys.stderr)
    config = {k: v for k, v in vars(args).items() if k != "json"} | {
        "command": " ".join(["python -m bench.calibrate", *(argv or sys.argv[1:])])}
    write_report(args.json, "calibrate", config, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
