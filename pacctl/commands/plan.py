"""`pacctl plan`: plan a fine-tuning job on the home's devices from their profiles, explain it, save it."""

from __future__ import annotations

from pathlib import Path

import click

from pac.errors import PacError
from pac.formats import DEFAULT_TOP_LAYERS
from pac.planner.baselines import STRATEGIES
from pac.planner.plan import Plan
from pac.planner.planner import plan_job
from pac.planner.profile import load_home
from pac.planner.workload import TrainingJob

GIB = float(1 << 30)


def _gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def render(plan: Plan) -> str:
    """The plan as text a person can read."""
    p1, job = plan.phase1, plan.job
    out = [f"plan ({plan.strategy}) for {plan.model}: {job.samples} samples, {job.epochs} epoch(s), "
           f"mini-batch {job.batch_size} = {p1.micro_batches} micro-batch(es) of {p1.micro_batch_size}, "
           f"{job.weight_bits}-bit backbone"
           + (f", its last {job.top_layers} layer(s) tuned (in the last stage)" if job.top_layers else ""), ""]
    rows = [[str(i), f"{s.first_layer}-{s.end_layer - 1}", str(s.end_layer - s.first_layer),
             ", ".join(f"{d} ({n})" for d, n in zip(s.devices, s.shares, strict=True))]
            for i, s in enumerate(p1.stages)]
    out += ["phase 1 (epoch 1): pipeline stages", _table(["stage", "layers", "count", "devices (samples per "
                                                          "micro-batch)"], rows), ""]
    out.append(f"  mini-batch {p1.minibatch_s:.3f} s simulated (estimate {p1.estimated_minibatch_s:.3f} s), "
               f"stages idle {p1.bubble_fraction:.0%} (bubbles, transfers, AllReduce), epoch 1: {_duration(p1.epoch_s)}")
    if plan.phase2 is not None:
        p2 = plan.phase2
        out.append(f"phase 2 (epochs 2-{job.epochs}): data parallel over the cache, "
                   f"{_duration(p2.epoch_s)} per epoch after moving {p2.moved_bytes / 1e6:.1f} MB "
                   f"in {_duration(p2.redistribution_s)}")
    out.append(f"  total: {_duration(plan.total_s)}")
    out.append("")
    rows = []
    for use in plan.usage:
        p2 = plan.phase2.step_shares.get(use.device, 0) if plan.phase2 else 0
        rows.append([use.device, _gib(use.phase1_peak_bytes) if use.phase1_peak_bytes else "-",
                     _gib(use.phase2_peak_bytes) if use.phase2_peak_bytes else "-",
                     _gib(use.memory_budget_bytes), f"{use.disk_bytes / GIB:.2f}/{_gib(use.disk_budget_bytes)}",
                     str(p2) if plan.phase2 else "-"])
    out.append(_table(["device", "phase-1 GiB", "phase-2 GiB", "budget GiB", "disk GiB", "phase-2 samples/step"],
                      rows))
    out += ["", held(plan), "", "why: " + plan.reason]
    return "\n".join(out)


def held(plan: Plan) -> str:
    """Where the model's weights are: each stage's devices hold its layers alone, the controller none."""
    stages = "; ".join(f"layers {s.first_layer}-{s.end_layer - 1} on {', '.join(s.devices)}"
                       for s in plan.phase1.stages)
    tuned = f", the {plan.job.top_layers} tuned layer(s)" if plan.job.top_layers else ""
    controller = (f"{_gib(plan.controller_bytes)} GiB" if plan.controller_bytes else "its share") + \
        (f" of its {_gib(plan.job.controller_budget_bytes)} GiB budget" if plan.job.controller_budget_bytes else "")
    return (f"where the model is held: each device reads only its stage's layers ({stages}); the controller "
            f"holds no other layer: {controller} (side network, head{tuned}, an evaluation batch, its process)")


@click.command("plan")
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Profile JSON of the model, devices and links (see docs/planner.md).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Samples per mini-batch (one optimiser step).")
@click.option("--micro-batches", default=None, type=click.IntRange(min=1),
              help="Micro-batches per mini-batch (must divide the batch size); chosen if not given.")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(min=1),
              help="Epochs: the first in phase 1, the rest from the activation cache.")
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Samples in the training set.")
@click.option("--weight-bits", default="32", show_default=True, type=click.Choice(["32", "16", "8", "4"]),
              help="Bits per frozen backbone weight, as the job's model.quantization holds it: 32 (none), "
                   "16 (bf16, fp16), 8 (int8), 4 (int4).")
@click.option("--top-layers", type=click.IntRange(min=0), default=None,
              help="The backbone's last N layers tuned (training.top_layers): no stage boundary among them "
                   "[default: 3 with --weight-bits 32, as a job's; 0 with a quantised backbone].")
@click.option("--strategy", default="pac", show_default=True, type=click.Choice(list(STRATEGIES)),
              help="pac, or a baseline to compare with (pipeline-ahead: pipeline-only with the frozen layers "
                   "running ahead; the other baselines run lock-step).")
@click.option("--out", "out_path", default="plan.json", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Where to write the plan for `pacctl train`.")
@click.option("--gantt", "gantt_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw one simulated mini-batch as a Gantt chart (PNG).")
def command(profile_path: Path, batch_size: int, micro_batches: int | None, epochs: int, samples: int,
            weight_bits: str, top_layers: int | None, strategy: str, out_path: Path, gantt_path: Path | None) -> None:
    """Plan a fine-tuning job from device profiles: print it, explain it, write it as JSON."""
    if top_layers is None:
        top_layers = DEFAULT_TOP_LAYERS if weight_bits == "32" else 0
    try:
        home = load_home(profile_path)
        job = TrainingJob(samples=samples, batch_size=batch_size, epochs=epochs, micro_batches=micro_batches,
                          weight_bits=int(weight_bits), top_layers=top_layers)
        result = plan_job(home, job, strategy)
    except PacError as error:
        raise click.ClickException(str(error)) from error
    click.echo(render(result.plan))
    idle = [d.name for d in home.devices if d.name not in result.plan.devices]
    if idle:
        click.echo(f"not used: {', '.join(idle)}")
    try:
        result.plan.save(out_path)
        if gantt_path is not None:
            from pac.planner.gantt import draw_gantt

            draw_gantt(result.simulation, gantt_path, title=f"{home.model.name}: one phase-1 mini-batch")
    except OSError as error:
        raise click.ClickException(f"cannot write {error.filename}: {error.strerror}") from error
    click.echo(f"\nwrote {out_path}" + (f" and {gantt_path}" if gantt_path else ""))
