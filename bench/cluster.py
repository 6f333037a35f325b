"""End to end on N daemons: PAC against the baselines, same daemons, same data.

    .venv/bin/python -m bench.cluster --devices 4 --model minilm --task mrpc --samples 1000 --epochs 3 \
        --json bench/results/cluster-minilm-mrpc.json [--systems pac,pipeline-only,data-only,ddp-lora]

Systems (rows carry `system`):
- `pac`: the planner's hybrid plan, epoch 1 through the pipeline writing the activation cache, the other
  epochs data parallel from the cache (`pacctl train`'s controller, pac/cluster/controller.py).
- `pipeline-only`: every epoch through a pipeline over all devices, no cache (like Eco-FL).
- `data-only`: every device holds the whole model, every epoch through the backbone, AllReduce (like EDDL).
- `ddp-lora`: what a user would otherwise run: `torchrun` DDP with gloo training LoRA (bench/ddp_lora.py).

The daemons are `pacd serve` processes on this machine, paired (mutual TLS), started once for all the
PAC systems; the model is profiled once before any system runs (a home profiles once and the daemons
keep the measurement), and that time is reported apart. `total_time_s`: from the controller's start
(loading and encoding the data, loading the stages) to the end of the last epoch, less the evaluation
after each epoch (`evaluation_s`: the evaluation records through the stages and the scoring, reported
apart; torchrun evaluates once, after its total); for ddp-lora from launching torchrun to the end of the
last epoch. `peak_memory_bytes_per_device`: each daemon's (or rank's)
peak RSS during that system's run (the kernel's peak counter is reset between systems), model loading
included. `final_metric`: evaluation on the eval subset after training (for MRPC: accuracy, F1, their mean).
Each daemon and rank uses `--threads` torch threads (default: cores / devices, at least 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import process_peak_bytes, write_report

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported: no handshake noise while pairing

# (train, eval, task, Parallel Adapters' and LoRA's learning rates: what a validation split chose for each,
# bench/results/accuracy-minilm-lrsearch.md)
TASKS = {
    "mrpc": ("../shared/data/mrpc/train.tsv", "../shared/data/mrpc/test.tsv", "classification", 1e-3, 2e-3),
    "sst2": ("../shared/data/sst2/train.tsv", "../shared/data/sst2/dev.tsv", "classification", 5e-4, 1e-3),
}
SYSTEMS = ("pac", "pipeline-only", "data-only", "ddp-lora")


def _reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak resident set size (VmHWM) to the current RSS
    except OSError:
        pass


def pac_job(cluster, args, system: str, train: str, evaluation: str, task: str, lr: float, out: Path):
    from pac.jobfile import parse_job

    return parse_job({
        "model": {"name_or_path": args.model, "quantization": args.quantization},
        "data": {"train": str(Path(train).resolve()), "eval": str(Path(evaluation).resolve()), "task": task,
                 "train_limit": args.samples, **({"eval_limit": args.eval_samples} if args.eval_samples else {})},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "seq_len": args.seq_len,
                     "learning_rate": lr, "seed": args.seed, "top_layers": args.top_layers,
                     "allreduce_precision": args.allreduce_precision, "side_precision": args.side_precision},
        "cache": {"precision": args.cache_precision, "directory": str(out / "cache")},
        "devices": {"mode": "list", "addresses": [d.address for d in cluster.daemons]},
        "output": {"directory": str(out / system)},
    }, source="bench.cluster", base_dir=out)


def run_pac_system(cluster, args, system: str, train: str, evaluation: str, task: str, lr: float,
                   out: Path) -> dict:
    from pac.cluster.controller import RunOptions, run_training

    job = pac_job(cluster, args, system, train, evaluation, task, lr, out)
    strategy = "pac" if system == "pac" else system
    options = RunOptions(strategy=strategy, use_cache=system == "pac")
    for daemon in cluster.daemons:
        _reset_peak(daemon.process.pid)
    started = time.perf_counter()
    metrics, controller = run_training(job, cluster.devices, cluster.identity, out / system, options,
                                  log_line=lambda line: print(f"  [{system}] {line}", file=sys.stderr))
    wall = time.perf_counter() - started
    return {
        # to the end of the last epoch, without the evaluation after each epoch (torchrun's rows evaluate once,
        # after their total): the evaluation's own seconds are in evaluation_s
        "system": system, "devices": len(cluster.daemons),
        "total_time_s": metrics["training_time_s"] - metrics.get("evaluation_s", 0.0),
        "evaluation_s": metrics.get("evaluation_s", 0.0), "training_time_with_evaluation_s": metrics["training_time_s"],
        "wall_time_s": wall, "epoch_times_s": metrics["epoch_times_s"],
        "peak_memory_bytes_per_device": [process_peak_bytes(d.process.pid) for d in cluster.daemons],
        "final_metric": metrics["eval"], "plan": metrics["plan"], "phase2": metrics["phase2"],
        "quantization": args.quantization,
        "train_samples": metrics["train_examples"], "eval_samples": metrics["eval_examples"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", choices=sorted(TASKS), default="mrpc")
    parser.add_argument("--samples", type=int, default=1000, help="training samples (seeded subset)")
    parser.add_argument("--eval-samples", type=int, default=None, help="evaluation samples (default: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, help="Parallel Adapters' learning rate (default per task)")
    parser.add_argument("--lora-lr", type=float, help="LoRA's learning rate (default per task)")
    parser.add_argument("--cache-precision", default="fp16")
    parser.add_argument("--quantization", default="none",
                        help="the PAC systems' frozen backbone (model.quantization): none, bf16, fp16, int8, int4")
    parser.add_argument("--top-layers", type=int, default=0,
                        help="the PAC systems' tuned top layers (training.top_layers; 0: the side network alone, as "
                             "bench/results/cluster-*.json were measured; a quantised backbone needs 0)")
    parser.add_argument("--allreduce-precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="the PAC systems' gradients on the AllReduce's wire (training.allreduce_precision)")
    parser.add_argument("--side-precision", default="fp32", choices=["fp32", "bf16"],
                        help="the PAC systems' side-network arithmetic (training.side_precision; bf16: autocast)")
    parser.add_argument("--threads", type=int, help="torch threads per daemon / rank")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--work", default="runs/bench-cluster", help="scratch directory")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    train, evaluation, task, default_lr, default_lora_lr = TASKS[args.task]
    lr = args.lr or default_lr
    args.lora_lr = args.lora_lr or default_lora_lr
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.devices)
    import torch

    torch.set_num_threads(threads)  # the controller's own work (encoding, initialisation, evaluation)
    out = Path(args.work).resolve()
    rows = []
    profile_s = None
    pac_systems = [s for s in systems if s != "ddp-lora"]
    if pac_systems:
        from pac.cluster.local import LocalCluster
        from pac.cluster.measure import measure_home, profile_sizes
        from pac.jobfile import parse_job

        with LocalCluster(out / "home", args.devices, threads=threads) as cluster:
            import asyncio

            probe_job = parse_job({"model": {"name_or_path": args.model, "quantization": args.quantization},
                                   "data": {"train": str(Path(train).resolve())},
                                   "training": {"seq_len": args.seq_len, "batch_size": args.batch_size},
                                   "devices": {"mode": "list", "addresses": [d.address for d in cluster.daemons]},
                                   "output": {"directory": str(out / "profile")}}, source="bench.cluster",
                                  base_dir=out)
            began = time.perf_counter()
            asyncio.run(measure_home(cluster.devices, cluster.identity, probe_job,
                                     profile_sizes(args.batch_size, None), lambda line: print(line, file=sys.stderr)))
            profile_s = time.perf_counter() - began
            from pac.cluster.prepare import prepare

            # warm the controller process up (imports, file cache) so the first system timed pays no more
            prepare(pac_job(cluster, args, "pac", train, evaluation, task, lr, out), lambda line: None)
            for system in pac_systems:
                print(f"{system} on {args.devices} daemons ...", file=sys.stderr)
                rows.append(run_pac_system(cluster, args, system, train, evaluation, task, lr, out))
                print(f"  {system}: {rows[-1]['total_time_s']:.1f} s, {rows[-1]['final_metric']}", file=sys.stderr)
    if "ddp-lora" in systems:
        from bench.ddp_lora import run_ddp_lora

        print(f"ddp-lora on {args.devices} ranks ...", file=sys.stderr)
        row = run_ddp_lora(args.devices, args.model, train, evaluation, args.samples, args.eval_samples,
                           args.epochs, args.batch_size, args.seq_len, args.lora_lr, args.seed, threads=threads)
        rows.append({key: row[key] for key in ("system", "devices", "total_time_s", "wall_time_s", "epoch_times_s",
                                               "peak_memory_bytes_per_device", "final_metric", "train_samples",
                                               "eval_samples") if key in row})
        print(f"  ddp-lora: {row['total_time_s']:.1f} s, {row['final_metric']}", file=sys.stderr)
    by = {row["system"]: row for row in rows}
    if "pac" in by:
        for row in rows:
            row["speedup_of_pac"] = row["total_time_s"] / by["pac"]["total_time_s"]
    config = {"devices": args.devices, "model": args.model, "task": args.task, "samples": args.samples,
              "eval_samples": args.eval_samples, "epochs": args.epochs, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "seed": args.seed, "parallel_lr": lr, "lora_lr": args.lora_lr,
              "cache_precision": args.cache_precision, "quantization": args.quantization, "top_layers": args.top_layers,
              "allreduce_precision": args.allreduce_precision, "side_precision": args.side_precision,
              "threads_per_device": threads,
              "profile_time_s": profile_s, "command": " ".join(["python -m bench.cluster", *(argv or sys.argv[1:])])}
    write_report(args.json, "cluster", config, rows)
    for row in rows:
        metric = row["final_metric"]
        print(f"{row['system']:>14}: {row['total_time_s']:7.1f} s  " + "  ".join(
            f"{k} {v:.4f}" for k, v in metric.items() if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
