"""Where a phase-1 step's time goes: the controller's calls beside the daemons' own timelines.

    .venv/bin/python -m bench.steps --devices 2 --strategies pac,data-only,pipeline-ahead --quantization bf16

A home of `--devices` `pacd` daemons on this machine (loopback, mutual TLS, one torch thread each) is
profiled once; each strategy's plan is run for one epoch (`--samples`, MRPC, batch 16) by `pacctl train`'s
controller, with every phase-1 `RunStep` timed on the controller. Per plan, the medians over the steps
after the first two:

- `step`: the controller's step (its calls sent to the last reply);
- `to_first` / `after_last`: from the step's start to the daemons' first operation, and from their last
  operation to the step's end (the daemons' clocks are this machine's: time.time);
- per stage and replica, each operation kind's seconds per step (A, F, B, send, allreduce; a wait for a
  neighbour or for the compute counts in the operation that waits);
- the simulated parts of a micro-batch per stage (`CostModel.stage_parts`: frozen forward, trainable
  forward, backward) and the plan's simulated mini-batch.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from bench.common import write_report

DATA = "../shared/data/mrpc/train.tsv"


class _Timed:
    """Phase1.step wrapped: each step's (start, end, events) on the controller's clock."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float, list[dict]]] = []

    def install(self):
        from pac.cluster import phase1

        original = phase1.Phase1.step

        async def step(inner, addresses, index, group, keys, holders):
            began = time.time()
            loss, events = await original(inner, addresses, index, group, keys, holders)
            self.steps.append((began, time.time(), events))
            return loss, events

        phase1.Phase1.step = step
        return original


def summary(steps: list[tuple[float, float, list[dict]]]) -> dict:
    """Medians over the steps after the first two (see the module's docstring)."""
    settled = steps[2:] or steps
    spans, firsts, lasts, ops = [], [], [], {}
    for began, ended, events in settled:
        spans.append(ended - began)
        if events:
            firsts.append(min(e["start_s"] for e in events if e["op"] != "A") - began)
            lasts.append(ended - max(e["end_s"] for e in events))
        per: dict[str, float] = {}
        for e in events:
            key = f"stage {e['stage']} replica {e['replica']} {e['op']}"
            per[key] = per.get(key, 0.0) + e["end_s"] - e["start_s"]
        for key, seconds in per.items():
            ops.setdefault(key, []).append(seconds)
    median = statistics.median
    return {"step_s": median(spans), "to_first_s": median(firsts) if firsts else None,
            "after_last_s": median(lasts) if lasts else None,
            "operations_s": {key: median(values) for key, values in sorted(ops.items())}}


def simulated_parts(controller, plan: dict, strategy: str) -> list[dict]:
    """Per stage, CostModel.stage_parts of one micro-batch on the plan's devices."""
    from pac.planner.cost import CostModel
    from pac.planner.profile import home_from_dict

    p = controller.prepared
    home = home_from_dict(controller.document)
    cost = CostModel(home, controller.job.to_training_job(len(p.train_items), strategy == "pac", **p.tokens()))
    names = [d.name for d in home.devices]
    batch = cost.job.batch_size // plan["micro_batches"]
    out = []
    for stage in plan["stages"]:
        group = [names.index(d) for d in stage["devices"]]
        frozen, forward, backward = cost.stage_parts(group, batch, stage["first_layer"], stage["end_layer"])
        out.append({"layers": [stage["first_layer"], stage["end_layer"]], "devices": len(group),
                    "frozen_s": frozen, "forward_s": forward, "backward_s": backward})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--strategies", default="pac,data-only,pipeline-ahead,pipeline-only")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--work", default="runs/bench-steps", help="scratch directory")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    import torch

    from bench.calibrate import job_for
    from pac.cluster.controller import RunOptions, run_training
    from pac.cluster.local import LocalCluster
    from pac.cluster.measure import measure_home, profile_sizes

    torch.set_num_threads(1)
    job_args = argparse.Namespace(model=args.model, quantization=args.quantization, data=DATA, samples=args.samples,
                                  epochs=1, batch_size=16, seq_len=128, top_layers=0)
    timed, rows = _Timed(), []
    timed.install()
    out = Path(args.work).resolve()
    with LocalCluster(out / "home", args.devices, threads=1) as cluster:
        asyncio.run(measure_home(cluster.devices, cluster.identity, job_for(cluster, job_args, out, "profile"),
                                 profile_sizes(16, None), lambda line: None))
        for strategy in args.strategies.split(","):
            timed.steps.clear()
            _, controller = run_training(job_for(cluster, job_args, out, strategy), cluster.devices,
                                         cluster.identity, out / strategy,
                                         RunOptions(strategy=strategy, use_cache=strategy == "pac", evaluate=False),
                                         log_line=lambda line: None)
            plan = controller.plan.to_dict()["phase1"]
            row = {"strategy": strategy, "micro_batches": plan["micro_batches"], "run_ahead": plan["run_ahead"],
                   "minibatch_simulated_s": plan["minibatch_s"], **summary(timed.steps),
                   "simulated_parts_per_micro_batch": simulated_parts(controller, plan, strategy)}
            rows.append(row)
            print(f"{strategy}: {len(plan['stages'])} stage(s), {plan['micro_batches']} micro-batch(es), "
                  f"{plan['run_ahead']} ahead: step {row['step_s'] * 1e3:.1f} ms (simulated "
                  f"{plan['minibatch_s'] * 1e3:.1f}); " + ", ".join(
                      f"{k} {v * 1e3:.1f}" for k, v in row["operations_s"].items()), file=sys.stderr)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"} | {
            "command": " ".join(["python -m bench.steps", *(argv or sys.argv[1:])])}
        write_report(args.json, "steps", config, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
