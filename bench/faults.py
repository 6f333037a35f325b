"""Faults during a job on local daemons: each scripted fault noticed, recovered from, the job completed.

    .venv/bin/python -m bench.faults --model minilm --task mrpc --samples 256 --epochs 3 \
        --json bench/results/faults-minilm-mrpc.json

Every scenario starts a fresh home of `--devices` daemons on this machine (paired, mutual TLS) and runs
`pacctl train`'s controller on the real planner's plan; once the job has taken the scenario's step, the
fault is applied:
- `sigkill-phase1`, `sigkill-phase2`: a device that holds the job is SIGKILLed (its daemon dies).
- `sigstop-phase2`: a device is SIGSTOPped (asleep: it holds its connections and answers nothing) past
  the deadline.
- `link-cut-phase2`: with `--network emulated` (each daemon in its own network namespace behind a
  shaped veth link, bench/netns.py) the device's link is taken down: the daemon keeps running and
  nothing goes in or out. On loopback, every packet to or from the device's port is dropped instead
  (`tc` on `lo`; its own calls out to others' ports still leave). Needs root and `tc`; skipped otherwise.
The device hit is one the plan uses (a stage's device in phase 1, a phase-2 member in phase 2).
- `controller-killed`: `pacctl train` itself is SIGKILLed in phase 2, then run again with `--resume`.
Rows carry `fault`, `phase`, `detected_s` (from the fault to the controller's notice), `recovered_s` (from
the notice, or from the resumed command's start, to the first step taken after it), `steps_redone`,
`completed`, `final_metric` (the evaluation's accuracy/F1 mean), and `fault_free_metric`: the mean over
`--seeds` of the same job without faults, whose spread (`fault_free_spread`) says how far seeds alone move
it; a faulted run uses the first seed.

`--replicas 0,1` runs the first seed's fault-free job and the phase-2 faults again with each further
`cache.replicas`: rows carry `replicas`, `replica_bytes` and `replication_s` (what the copies cost before
phase 2), `recomputed_samples` (of the run after the fault: the lost share recomputed through the backbone,
or 0 when read from a copy) and `phase2_epochs_s`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import write_report

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

TASKS = {"mrpc": ("../shared/data/mrpc/train.tsv", "../shared/data/mrpc/test.tsv", 1e-3),
         "sst2": ("../shared/data/sst2/train.tsv", "../shared/data/sst2/dev.tsv", 5e-4)}
SCENARIOS = ("sigkill-phase1", "sigkill-phase2", "sigstop-phase2", "link-cut-phase2", "controller-killed")


def job_mapping(args, cluster, out: Path, seed: int, replicas: int = 0) -> dict:
    train, evaluation, lr = TASKS[args.task]
    return {
        "model": {"name_or_path": args.model},
        "data": {"train": str(Path(train).resolve()), "eval": str(Path(evaluation).resolve()),
                 "task": "classification", "train_limit": args.samples, "eval_limit": args.eval_samples},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "seq_len": args.seq_len,
                     "learning_rate": lr, "seed": seed, "checkpoint_steps": args.checkpoint_steps,
                     "top_layers": 0},  # the side network, as bench/results/faults-*.json were measured
        "cache": {"precision": "fp16", "directory": str(out / "cache"), "replicas": replicas},
        "devices": {"mode": "list", "addresses": [d.address for d in cluster.daemons]},
        "output": {"directory": str(out / "run")},
    }


def metric(evaluation: dict) -> float | None:
    if "accuracy" in evaluation and "f1" in evaluation:
        return (evaluation["accuracy"] + evaluation["f1"]) / 2
    return evaluation.get("accuracy")


class Trigger:
    """A progress display that applies `fault()` once the job has taken `after` steps."""

    def __init__(self, after: int, fault) -> None:
        self.after, self.fault, self.steps, self.at = after, fault, 0, None

    def update(self, *args) -> None:
        self.steps += 1
        if self.steps == self.after and self.at is None:
            self.at = time.time()
            self.fault()

    def message(self, text: str) -> None:
        print(f"    {text}", file=sys.stderr)


def cut_link(port: int) -> list[list[str]]:
    """Drop every packet to or from `port` on loopback (htb sends them to a class whose queue holds none:
    this kernel has no tc actions); returns the commands that undo it."""
    commands = [["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10", "r2q", "100000"],
                ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "100gbit"],
                ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", "8bit"],
                ["qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "pfifo", "limit", "0"]]
    commands += [["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
                  field, str(port), "0xffff", "flowid", "1:20"] for field in ("dport", "sport")]
    for command in commands:
        subprocess.run(["tc", *command], check=True, capture_output=True)
    return [["tc", "qdisc", "del", "dev", "lo", "root"]]


def victim_of(cluster, out: Path, phase: int):
    """A daemon the plan uses: in phase 2 a member of phase 2, in phase 1 a stage's device."""
    from pac.planner.plan import Plan

    plan = Plan.load(out / "run" / "plan.json")
    wanted = [n for s in plan.phase1.stages for n in s.devices] if phase == 1 else \
        [n for n, c in plan.phase2.step_shares.items() if c > 0]
    return next(d for d in reversed(cluster.daemons) if d.node_id in wanted)


def home_of(args, out: Path, stack: contextlib.ExitStack):
    """A fresh home of `args.devices` daemons: on loopback, or each in its own namespace (and the network)."""
    from pac.cluster.local import LocalCluster

    net = None
    if args.network == "emulated":
        from bench.netns import EmulatedNetwork

        net = stack.enter_context(EmulatedNetwork(args.devices, args.link))
    hosts, prefixes = (net.hosts, [net.prefix(i) for i in range(args.devices)]) if net else (None, None)
    cluster = stack.enter_context(LocalCluster(out / "home", args.devices, threads=1, hosts=hosts, prefixes=prefixes))
    return cluster, net


def run_scenario(args, scenario: str | None, seed: int, out: Path, replicas: int = 0) -> dict:
    """One job on a fresh home, with `scenario`'s fault (None: none)."""
    from pac.cluster.controller import RunOptions, run_training
    from pac.jobfile import parse_job

    out.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = -(-args.samples // args.batch_size)
    phase = 1 if scenario == "sigkill-phase1" else 2
    after = steps_per_epoch // 2 if phase == 1 else steps_per_epoch + steps_per_epoch // 2
    undo: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        cluster, net = home_of(args, out, stack)
        mapping = job_mapping(args, cluster, out, seed, replicas)
        if scenario == "controller-killed":
            return controller_killed(args, cluster, mapping, out, after)
        victims = []

        def fault() -> None:
            victim = victim_of(cluster, out, phase)
            victims.append(victim)
            if scenario == "link-cut-phase2" and net is not None:
                link = net.outer(cluster.daemons.index(victim))
                subprocess.run(["ip", "link", "set", link, "down"], check=True)
                undo.append(["ip", "link", "set", link, "up"])
            elif scenario == "link-cut-phase2":
                undo.extend(cut_link(victim.port))
            else:
                os.kill(victim.process.pid, signal.SIGSTOP if scenario == "sigstop-phase2" else signal.SIGKILL)

        trigger = Trigger(after if scenario else 0, fault)
        job = parse_job(mapping, source="bench.faults", base_dir=out)
        try:
            metrics, _ = run_training(job, cluster.devices, cluster.identity, out / "run",
                                      RunOptions(deadline_s=args.deadline, profile_batch_sizes=(args.batch_size,)),
                                      progress=trigger, log_line=trigger.message)
            completed = True
        except Exception as error:  # the row says it did not complete, and why
            print(f"    {scenario}: {error}", file=sys.stderr)
            metrics, completed = json.loads((out / "run" / "status.json").read_text()), False
        finally:
            for command in undo:
                subprocess.run(command, check=False)
            if scenario == "sigstop-phase2" and victims:
                os.kill(victims[0].process.pid, signal.SIGCONT)
    fault = (metrics.get("faults") or [None])[0] if scenario else None
    runs = metrics.get("phase2_runs") or [{}]
    return {"fault": scenario or "none", "seed": seed, "replicas": replicas,
            "replica_bytes": runs[0].get("replica_bytes", 0), "replication_s": runs[0].get("replication_s", 0.0),
            "recomputed_samples": runs[-1].get("recomputed_samples") if len(runs) > 1 else None,
            "phase2_epochs_s": [e["seconds"] for e in metrics.get("epochs", []) if e.get("phase") == 2], "phase": fault["phase"] if fault else None,
            "detected_s": fault["noticed_unix"] - trigger.at if fault and trigger.at else None,
            "recovered_s": fault["recovered_s"] if fault else None,
            "steps_redone": fault["steps_redone"] if fault else 0, "completed": completed,
            "why": fault["why"] if fault else None, "replanned": fault["replanned"] if fault else None,
            "device": victims[0].node_id if victims else None,
            "final_metric": metric(metrics.get("eval") or {}) if completed else None,
            "training_time_s": metrics.get("training_time_s")}


def controller_killed(args, cluster, mapping: dict, out: Path, after: int) -> dict:
    """`pacctl train` SIGKILLed once `after` steps are done, then `pacctl train --resume`."""
    from pac.jobfile.parse import job_toml

    job_file = out / "job.toml"
    job_file.write_text(job_toml(mapping))
    env = {**os.environ, "PAC_HOME": str(cluster.root / "home"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pacctl", "train", str(job_file)]
    status = out / "run" / "status.json"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (status.exists() and json.loads(status.read_text()).get("step", 0) >= after):
        if process.poll() is not None:
            raise RuntimeError("pacctl train ended before the fault")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    started = time.time()
    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True)
    metrics = json.loads((out / "run" / "metrics.json").read_text()) if resumed.returncode == 0 else {}
    resume = (metrics.get("resumes") or [{}])[-1]
    first = next((s for s in metrics.get("steps", []) if s["step"] > resume.get("step", 0)), None)
    return {"fault": "controller-killed", "seed": mapping["training"]["seed"], "phase": 2, "detected_s": None,
            "recovered_s": (resume["resumed_unix"] - started + first["seconds"]) if first and resume else None,
            "steps_redone": resume.get("steps_redone"), "completed": resumed.returncode == 0,
            "why": "pacctl train SIGKILLed; pacctl train --resume", "replanned": None,
            "final_metric": metric(metrics.get("eval") or {}), "training_time_s": metrics.get("training_time_s")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", choices=sorted(TASKS), default="mrpc")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--checkpoint-steps", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=6.0, help="pacctl train --deadline")
    parser.add_argument("--seeds", default="0,1,2", help="fault-free runs (their spread); faults use the first")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--replicas", default="0", help="cache.replicas values; the first for every run")
    parser.add_argument("--network", choices=("loopback", "emulated"), default="loopback",
                        help="daemons on 127.0.0.1, or each in its own namespace behind a shaped link (root)")
    parser.add_argument("--link", default="1gbit", help="--network emulated: each link's rate")
    parser.add_argument("--work", default="runs/bench-faults")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if os.geteuid() != 0 or subprocess.run(["which", "tc"], capture_output=True).returncode:
        scenarios = [s for s in scenarios if s != "link-cut-phase2"]
    work = Path(args.work).resolve()
    replicas = [int(r) for r in args.replicas.split(",")]
    baseline = [run_scenario(args, None, seed, work / f"none-{seed}", replicas[0]) for seed in seeds]
    values = [r["final_metric"] for r in baseline if r["final_metric"] is not None]
    mean = statistics.fmean(values) if values else None
    rows = baseline + [run_scenario(args, s, seeds[0], work / s, replicas[0]) for s in scenarios]
    for r in replicas[1:]:
        rows += [run_scenario(args, None, seeds[0], work / f"none-r{r}", r)]
        rows += [run_scenario(args, s, seeds[0], work / f"{s}-r{r}", r) for s in scenarios if s.endswith("phase2")]
    for row in rows:
        row.update(fault_free_metric=mean, fault_free_spread=[min(values), max(values)] if values else None)
        print(json.dumps(row), file=sys.stderr)
    write_report(args.json, "faults", {k: v for k, v in vars(args).items() if k != "json"}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
