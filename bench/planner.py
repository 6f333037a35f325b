"""Benchmark the planner: planning wall time, and the simulated epoch time of its plans against
pipeline-only (like Eco-FL) and data-only (like EDDL) on synthetic paper-like homes.

    .venv/bin/python -m bench.planner --layers 24,48,96 --devices 4,8,16 --json bench/results/planner.json

Homes: mixes of 4 GB and 8 GB Jetson-class boards of unequal speed on 1 Gbit/s links
(pac/planner/synthetic.py: batch-1 layer times modelled, their growth with the batch measured on real
layers). Every home is planned at each mini-batch size of --batch-sizes: "n" is as many samples as devices
(the paper's §6.4 comparison with Eco-FL, the headline), integers are fixed sizes (the paper's other
experiments use 16). Epoch times are phase 1 (epoch 1, no cache) for every strategy, simulated by
pac/planner/simulator.py; the modelled numbers are not measurements of real boards.

`--what-if` replays the same homes under a change, to show what it is worth (a diagnostic; such runs must
write elsewhere than the default report): `fp16-allreduce` sums 16-bit side gradients on the wire (2 bytes
per parameter instead of 4: the runtime's `training.allreduce_precision = "bf16"` or `"fp16"`, which the
planner then costs), `free-allreduce` makes every AllReduce cost nothing (an upper bound for any scheme
that hides it, e.g. behind the next mini-batch's backbone forward; not in the runtime).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import write_report
from pac.planner.cost import CostModel
from pac.planner.errors import InfeasibleError
from pac.planner.planner import plan_job
from pac.planner.synthetic import BATCH_SCALING, MEASURED_BATCHES, synthetic_home
from pac.planner.workload import TrainingJob

PAPER_SPEEDUP = 1.4  # the paper's smallest throughput gain over Eco-FL (§6.4: 1.40x to 1.85x)
DEFAULT_JSON = Path("bench/results/planner.json")
WHAT_IFS = ("fp16-allreduce", "free-allreduce")  # diagnostics: the first a job option, the second not in the runtime


@contextlib.contextmanager
def what_if(name: str | None) -> Iterator[None]:
    """`free-allreduce`: every CostModel's AllReduce takes no time while inside (fp16 is a job field)."""
    if name != "free-allreduce":
        yield
        return
    original = CostModel.allreduce
    CostModel.allreduce = lambda self, group, nbytes: 0.0  # type: ignore[method-assign]
    try:
        yield
    finally:
        CostModel.allreduce = original  # type: ignore[method-assign]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _batches(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    for value in values:
        if value != "n" and not (value.isdigit() and int(value) > 0):
            raise argparse.ArgumentTypeError(f"batch size {value!r}: a positive integer or n (= devices)")
    return values


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _epoch(home, job, strategy: str) -> float | None:
    try:
        return plan_job(home, job, strategy).plan.phase1.epoch_s
    except InfeasibleError:
        return None


def run_case(layers: int, devices: int, seed: int, batch: str, args: argparse.Namespace) -> dict:
    home = synthetic_home(layers, devices, seed=seed, latency_s=args.latency_s)
    batch_size = devices if batch == "n" else int(batch)
    job = TrainingJob(samples=args.samples, batch_size=batch_size, epochs=args.epochs)
    if args.what_if == "fp16-allreduce":
        job = dataclasses.replace(job, gradient_bytes_per_param=2)
    times, cpu_times = [], []
    result = None
    for _ in range(args.repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = plan_job(home, job)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    assert result is not None
    plan = result.plan
    pipeline = _epoch(home, job, "pipeline-only")
    pipeline_ahead = _epoch(home, job, "pipeline-ahead")
    best_order = _epoch(home, job, "pipeline-best-order")
    data = _epoch(home, job, "data-only")
    # The paper's baselines with their own technique: LoRA, backward through the backbone, no cache.
    lora_home = synthetic_home(layers, devices, seed=seed, latency_s=args.latency_s, technique="lora")
    ecofl = _epoch(lora_home, job, "pipeline-only")
    eddl = _epoch(lora_home, job, "data-only")
    row = {
        "layers": layers, "devices": devices, "seed": seed,
        "device_kinds": sorted(d.name.rsplit("-", 1)[0] for d in home.devices),
        "batch_setting": batch, "batch_size": job.batch_size,
        "plan_time_s": min(times),
        "plan_time_median_s": statistics.median(times),
        # CPU seconds of the planning run (single-threaded): what it costs without other processes.
        "plan_cpu_time_s": min(cpu_times),
        "epoch_time_s": plan.phase1.epoch_s,
        "pipeline_only_epoch_time_s": pipeline,
        "pipeline_ahead_epoch_time_s": pipeline_ahead,
        "run_ahead": plan.phase1.run_ahead,
        "pipeline_best_order_epoch_time_s": best_order,
        "data_only_epoch_time_s": data,
        "single_device_epoch_time_s": _epoch(home, job, "single-device"),
        "speedup_vs_pipeline_only": _ratio(pipeline, plan.phase1.epoch_s),
        "speedup_vs_pipeline_ahead": _ratio(pipeline_ahead, plan.phase1.epoch_s),
        "speedup_vs_pipeline_best_order": _ratio(best_order, plan.phase1.epoch_s),
        "speedup_vs_data_only": _ratio(data, plan.phase1.epoch_s),
        "ecofl_lora_epoch_time_s": ecofl, "eddl_lora_epoch_time_s": eddl,
        "speedup_vs_ecofl_lora": _ratio(ecofl, plan.phase1.epoch_s),
        "speedup_vs_eddl_lora": _ratio(eddl, plan.phase1.epoch_s),
        # the whole job: PAC's later epochs run from the cache, LoRA's every epoch through the backbone
        "job_speedup_vs_ecofl_lora": _ratio(ecofl * job.epochs if ecofl else None, plan.total_s),
        "job_speedup_vs_eddl_lora": _ratio(eddl * job.epochs if eddl else None, plan.total_s),
        # Share of our simulated mini-batch spent after the last backward, in side-gradient AllReduce.
        "allreduce_tail_fraction": _allreduce_tail(result),
        "estimated_minibatch_s": plan.phase1.estimated_minibatch_s,
        "simulated_minibatch_s": plan.phase1.minibatch_s,
        "total_time_s": plan.total_s,
        "stages": [[s.first_layer, s.end_layer, len(s.devices)] for s in plan.phase1.stages],
        "micro_batches": plan.phase1.micro_batches,
        "candidates": result.candidates,
    }
    return row


def _allreduce_tail(result) -> float | None:
    if result.simulation.run_ahead:  # several mini-batches overlap: no tail of one to measure
        return None
    events = result.simulation.events
    end = result.simulation.minibatch_s
    compute_end = max((e.end for e in events if e.kind in ("F", "B")), default=0.0)
    return (end - compute_end) / end if end > 0 else 0.0


def summarise(rows: list[dict], batches: list[str]) -> dict:
    """Per mini-batch setting: speedups over homes (mean, min, max) and the slowest planning time."""
    out = {}
    for batch in batches:
        mine = [r for r in rows if r["batch_setting"] == batch]
        entry: dict = {"homes": len(mine)}
        for key in ("speedup_vs_pipeline_only", "speedup_vs_pipeline_ahead", "speedup_vs_pipeline_best_order",
                    "speedup_vs_data_only",
                    "speedup_vs_ecofl_lora", "speedup_vs_eddl_lora", "job_speedup_vs_ecofl_lora",
                    "job_speedup_vs_eddl_lora", "allreduce_tail_fraction"):
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                entry[key] = {"mean": round(statistics.mean(values), 3), "min": round(min(values), 3),
                              "max": round(max(values), 3)}
        # Data-only is infeasible where a 4 GB board cannot hold the whole model: the homes it ran on.
        entry["homes_data_only_fits"] = sum(1 for r in mine if r.get("speedup_vs_data_only") is not None)
        big = [r for r in mine if (r["layers"], r["devices"]) == (96, 16)]
        entry["slowest_plan_time_s"] = round(max(r["plan_time_s"] for r in mine), 3)
        entry["slowest_plan_cpu_time_s"] = round(max(r["plan_cpu_time_s"] for r in mine), 3)
        if big:
            entry["plan_time_96_layers_16_devices_s"] = round(max(r["plan_time_s"] for r in big), 3)
            entry["plan_cpu_time_96_layers_16_devices_s"] = round(max(r["plan_cpu_time_s"] for r in big), 3)
        out[batch] = entry
    return out


def draw(rows: list[dict], batches: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["layers"], r["devices"]) for r in rows})
    labels = [f"{layer}L/{dev}D" for layer, dev in cases]
    headline = batches[0]

    def of(case: tuple[int, int], batch: str) -> list[dict]:
        return [r for r in rows if (r["layers"], r["devices"]) == case and r["batch_setting"] == batch]

    def mean(key: str, case: tuple[int, int]) -> float:
        values = [r[key] for r in of(case, headline) if r[key] is not None]
        return statistics.mean(values) if values else 0.0

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(18, 4.8))
    x = list(range(len(cases)))
    for k, (key, name) in enumerate([("plan_time_s", "wall (shared CPU)"), ("plan_cpu_time_s", "CPU")]):
        left.bar([i + (k - 0.5) * 0.4 for i in x],
                 [max(r[key] for r in rows if (r["layers"], r["devices"]) == c) for c in cases], 0.4, label=name)
    left.axhline(1.0, color="#C44E52", linestyle="--", label="1 s target")
    left.set_xticks(x, labels, rotation=45)
    left.set_ylabel("planning time, s (worst home and batch)")
    left.set_title("planning time")
    left.legend()
    width = 0.2
    for k, (key, name, colour) in enumerate([("epoch_time_s", "PAC plan", "#4C72B0"),
                                              ("pipeline_only_epoch_time_s", "pipeline-only", "#DD8452"),
                                              ("data_only_epoch_time_s", "data-only (0 = OOM)", "#55A868"),
                                              ("ecofl_lora_epoch_time_s", "LoRA pipeline (Eco-FL-like)",
                                               "#8172B3")]):
        middle.bar([i + (k - 1.5) * width for i in x], [mean(key, c) / 60 for c in cases], width, label=name,
                   color=colour)
    middle.set_xticks(x, labels, rotation=45)
    middle.set_ylabel("simulated epoch-1 time, min (mean over homes)")
    middle.set_title(f"epoch time, mini-batch = {'devices' if headline == 'n' else headline}")
    middle.legend()
    width = 0.8 / len(batches)
    for k, batch in enumerate(batches):
        values = [[r["speedup_vs_pipeline_only"] for r in of(c, batch) if r["speedup_vs_pipeline_only"]]
                  for c in cases]
        centre = [statistics.mean(v) if v else 0.0 for v in values]
        low = [m - min(v) if v else 0.0 for m, v in zip(centre, values, strict=True)]
        high = [max(v) - m if v else 0.0 for m, v in zip(centre, values, strict=True)]
        right.bar([i + (k - (len(batches) - 1) / 2) * width for i in x], centre, width, yerr=[low, high],
                  capsize=2, label=f"mini-batch {'= devices' if batch == 'n' else batch}")
    right.axhline(PAPER_SPEEDUP, color="#C44E52", linestyle="--", label=f"{PAPER_SPEEDUP}x (paper, vs Eco-FL)")
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_xticks(x, labels, rotation=45)
    right.set_ylabel("throughput vs pipeline-only (mean, min-max)")
    right.set_title("speedup over pipeline-only")
    right.legend(fontsize=8)
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
    parser.add_argument("--batch-sizes", type=_batches, default=["n", "16", "32"],
                        help="mini-batch sizes, n = as many as devices; the first is the headline")
    parser.add_argument("--latency-s", type=float, default=0.002, help="per-message link latency")
    parser.add_argument("--repeat", type=int, default=3, help="planning runs per home (the minimum is kept)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--what-if", choices=WHAT_IFS, default=None,
                        help="diagnostic: a change the runtime does not have (see the module docstring)")
    parser.add_argument("--png", type=Path, default=None, help="chart (default: --json with .png)")
    args = parser.parse_args(argv)
    if args.what_if and args.json.resolve() == DEFAULT_JSON.resolve():
        parser.error(f"--what-if {args.what_if} models what the runtime does not do: write it elsewhere (--json)")
    load_at_start = os.getloadavg()
    rows = []
    for batch in args.batch_sizes:
        for layers in args.layers:
            for devices in args.devices:
                for seed in range(args.seeds):
                    with what_if(args.what_if):
                        row = run_case(layers, devices, seed, batch, args)
                    rows.append(row)
                    print(f"batch {row['batch_size']:2d} {layers:3d} layers {devices:2d} devices seed {seed}: plan "
                          f"{row['plan_time_s']:.3f} s, epoch {row['epoch_time_s']:.0f} s, "
                          f"x{row['speedup_vs_pipeline_only']:.2f} vs pipeline-only "
                          f"({row['pipeline_only_epoch_time_s']:.0f} s), x{row['speedup_vs_ecofl_lora'] or 0:.2f} vs "
                          f"the LoRA pipeline ({row['ecofl_lora_epoch_time_s'] or 0:.0f} s)", flush=True)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "png")}
    config["home"] = ("pac.planner.synthetic.synthetic_home: nano-4g / tx2-8g / nx-8g mixes, 1 Gbit/s links, "
                      "16-bit backbone, fp32 side-network gradients AllReduced every mini-batch")
    config["allreduce"] = ("as StageReplica.run_step: each stage, after its own last backward and its sends, "
                           "ring-AllReduces its side gradients in its group while earlier stages drain "
                           "(32 MiB buckets, pipelined segments, see CostModel.allreduce); the optimiser "
                           "step follows once every stage is done")
    if args.what_if:
        config["what_if"] = f"{args.what_if}: NOT what the runtime does (a diagnostic)"
    config["batch_scaling"] = {"batches": list(MEASURED_BATCHES), **BATCH_SCALING,
                               "source": 'time(b)/time(1) of pac.profiling.measure("minilm", ..., 128), '
                                         "medians of 3 CPU runs (see pac/planner/synthetic.py)"}
    config["batch_sizes_meaning"] = ("n = devices (paper §6.4, the comparison with Eco-FL; headline); "
                                     "integers are fixed mini-batch sizes (paper §3-§6.3 use 16)")
    # Planning times are wall times on a shared machine: record how busy it was.
    config["load_average_1_5_15_at_start"] = [round(x, 2) for x in load_at_start]
    config["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(rows, args.batch_sizes)
    report = write_report(args.json, "planner", config, rows)
    report["summary"] = summary
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    draw(rows, args.batch_sizes, args.png or args.json.with_suffix(".png"))
    for batch, entry in summary.items():
        speed = entry.get("speedup_vs_pipeline_only", {})
        data = entry.get("speedup_vs_data_only", {})
        print(f"mini-batch {'= devices' if batch == 'n' else batch}: speedup vs pipeline-only mean "
              f"{speed.get('mean')}x (min {speed.get('min')}, max {speed.get('max')}) over {entry['homes']} homes; "
              f"vs data-only mean {data.get('mean')}x (min {data.get('min')}, max {data.get('max')}) over the "
              f"{entry['homes_data_only_fits']} homes where it fits; "
              f"planning 96 layers x 16 devices {entry.get('plan_time_96_layers_16_devices_s')} s wall, "
              f"{entry.get('plan_cpu_time_96_layers_16_devices_s')} s CPU (slowest of all: "
              f"{entry['slowest_plan_time_s']} s wall, {entry['slowest_plan_cpu_time_s']} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
