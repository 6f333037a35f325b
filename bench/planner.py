"""Benchmark the planner: planning wall time, and the simulated epoch time of its plans against
pipeline-only (like Eco-FL) and data-only (like EDDL) on synthetic paper-like homes.

    .venv/bin/python -m bench.planner --layers 24,48,96 --devices 4,8,16 --json bench/results/planner.json

Homes: mixes of 4 GB and 8 GB Jetson-class boards of unequal speed on 1 Gbit/s links
(pac/planner/synthetic.py); the mini-batch holds as many samples as there are devices, as in the paper's
scaling experiment (§6). Epoch times are phase 1 (epoch 1, no cache) for every strategy, simulated by
pac/planner/simulator.py; the modelled numbers are not measurements of real boards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.common import write_report
from pac.planner.errors import InfeasibleError
from pac.planner.job import TrainingJob
from pac.planner.planner import plan_job
from pac.planner.synthetic import synthetic_home


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _epoch(home, job, strategy: str) -> float | None:
    try:
        return plan_job(home, job, strategy).plan.phase1.epoch_s
    except InfeasibleError:
        return None


def run_case(layers: int, devices: int, seed: int, args: argparse.Namespace) -> dict:
    home = synthetic_home(layers, devices, seed=seed, latency_s=args.latency_s)
    job = TrainingJob(samples=args.samples, batch_size=devices * args.batch_per_device, epochs=args.epochs)
    times = []
    result = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = plan_job(home, job)
        times.append(time.perf_counter() - start)
    assert result is not None
    plan = result.plan
    pipeline = _epoch(home, job, "pipeline-only")
    row = {
        "layers": layers, "devices": devices, "seed": seed,
        "device_kinds": sorted(d.name.rsplit("-", 1)[0] for d in home.devices),
        "batch_size": job.batch_size,
        "plan_time_s": min(times),
        "plan_time_median_s": statistics.median(times),
        "epoch_time_s": plan.phase1.epoch_s,
        "pipeline_only_epoch_time_s": pipeline,
        "pipeline_best_order_epoch_time_s": _epoch(home, job, "pipeline-best-order"),
        "data_only_epoch_time_s": _epoch(home, job, "data-only"),
        "single_device_epoch_time_s": _epoch(home, job, "single-device"),
        "speedup_vs_pipeline_only": pipeline / plan.phase1.epoch_s if pipeline else None,
        "estimated_minibatch_s": plan.phase1.estimated_minibatch_s,
        "simulated_minibatch_s": plan.phase1.minibatch_s,
        "total_time_s": plan.total_s,
        "stages": [[s.first_layer, s.end_layer, len(s.devices)] for s in plan.phase1.stages],
        "micro_batches": plan.phase1.micro_batches,
        "candidates": result.candidates,
    }
    return row


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["layers"], r["devices"]) for r in rows})
    labels = [f"{layer}L/{dev}D" for layer, dev in cases]

    def mean(key: str, case: tuple[int, int]) -> float:
        values = [r[key] for r in rows if (r["layers"], r["devices"]) == case and r[key] is not None]
        return statistics.mean(values) if values else 0.0

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    x = range(len(cases))
    left.bar(x, [max(r["plan_time_s"] for r in rows if (r["layers"], r["devices"]) == c) for c in cases],
             color="#4C72B0")
    left.axhline(1.0, color="#C44E52", linestyle="--", label="1 s target")
    left.set_xticks(list(x), labels, rotation=45)
    left.set_ylabel("planning wall time, s (worst home)")
    left.set_title("planning time")
    left.legend()
    width = 0.27
    for k, (key, name, colour) in enumerate([("epoch_time_s", "PAC plan", "#4C72B0"),
                                              ("pipeline_only_epoch_time_s", "pipeline-only", "#DD8452"),
                                              ("data_only_epoch_time_s", "data-only (0 = OOM)", "#55A868")]):
        right.bar([i + (k - 1) * width for i in x], [mean(key, c) / 60 for c in cases], width, label=name,
                  color=colour)
    right.set_xticks(list(x), labels, rotation=45)
    right.set_ylabel("simulated epoch-1 time, min (mean over homes)")
    right.set_title("epoch time on synthetic heterogeneous homes")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=_ints, default=[24, 48, 96])
    parser.add_argument("--devices", type=_ints, default=[4, 8, 16])
    parser.add_argument("--seeds", type=int, default=3, help="homes per (layers, devices) case")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-per-device", type=int, default=1)
    parser.add_argument("--latency-s", type=float, default=0.002, help="per-message link latency")
    parser.add_argument("--repeat", type=int, default=3, help="planning runs per home (the minimum is kept)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/planner.json"))
    parser.add_argument("--png", type=Path, default=None, help="chart (default: --json with .png)")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()
    rows = []
    for layers in args.layers:
        for devices in args.devices:
            for seed in range(args.seeds):
                row = run_case(layers, devices, seed, args)
                rows.append(row)
                print(f"{layers:3d} layers {devices:2d} devices seed {seed}: plan {row['plan_time_s']:.3f} s, "
                      f"epoch {row['epoch_time_s']:.0f} s vs pipeline-only {row['pipeline_only_epoch_time_s']} "
                      f"data-only {row['data_only_epoch_time_s']}", flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "png")}
    config["home"] = "pac.planner.synthetic.synthetic_home: nano-4g / tx2-8g / nx-8g mixes, 1 Gbit/s links"
    # Planning times are wall times on a shared machine: record how busy it was.
    config["load_average_1_5_15_at_start"] = [round(x, 2) for x in load_at_start]
    config["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    config["batch_size"] = "devices * batch_per_device (paper §6: batch size equals the number of devices)"
    write_report(args.json, "planner", config, rows)
    draw(rows, args.png or args.json.with_suffix(".png"))
    speedups = [r["speedup_vs_pipeline_only"] for r in rows if r["speedup_vs_pipeline_only"]]
    worst = max(r["plan_time_s"] for r in rows)
    print(f"mean speedup vs pipeline-only {statistics.mean(speedups):.2f}x over {len(speedups)} homes "
          f"(min {min(speedups):.2f}, max {max(speedups):.2f}); slowest planning {worst:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
