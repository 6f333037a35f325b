"""`pacctl train JOB.toml`: fine-tune across the home's devices, both phases, and write the results."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import click

from pac.errors import PacError
from pac.planner.baselines import STRATEGIES
from pac.security.home import controller_identity, default_home
from pacctl.commands.init import home_option


def jobs_dir(home: Path | None) -> Path:
    return (home or default_home()) / "jobs"


async def usable_devices(job, identity, home: Path) -> tuple[list, list[str]]:
    """The devices of this home the job's [devices] table finds now (DeviceRecord), and the problems met:
    mDNS and the remembered devices (modes "discover", "cluster"), the listed addresses."""
    from pac.cluster.discover import find_home

    section = job.devices
    found, problems = await find_home(home, identity, section.mdns_timeout, section.interfaces, section.addresses,
                                      section.mode != "list", remembered=section.mode != "list")
    return found.ours + (found.unpaired if section.insecure else []), problems


def as_devices(records) -> list:
    from pac.cluster.context import Device

    return [Device(r.node_id, r.address, r.hostname, r.memory_budget_bytes) for r in records]


def find_job_devices(job, home: Path | None):
    """The devices the job's [devices] table names, as pac.cluster.context.Device; its identity; and a
    function that finds them anew while the job runs (a device that joins is taken in, devices.rejoin)."""
    section, home = job.devices, home or default_home()
    identity = None if section.insecure else controller_identity(home)
    usable, problems = asyncio.run(usable_devices(job, identity, home))
    said = f" ({'; '.join(problems)})" if problems else ""
    if section.mode == "list":
        from pac.discovery.records import parse_peer

        answered = {(r.host, r.port) for r in usable} | {(r.hostname, r.port) for r in usable}
        silent = [a for a in section.addresses if parse_peer(a) not in answered]
        if not usable or (silent and not section.rejoin):
            raise click.ClickException(f"{job.source}: devices.addresses {silent or list(section.addresses)} did "
                                       f"not answer as devices of this home{said}")
        if silent:
            click.echo(f"warning: devices.addresses {silent} did not answer as devices of this home{said}; "
                       "the job starts without them and takes them in when they answer (devices.rejoin)", err=True)
    if not usable:
        hint = "; ".join(problems) if problems else "is pacd running and paired (pacctl devices)?"
        raise click.ClickException(f"{job.source}: no device of this home found: {hint}")

    async def again() -> list:
        return as_devices((await usable_devices(job, identity, home))[0])

    return as_devices(usable), identity, again


def kept_checkpoint(output: Path, command: str = "pacctl train JOB") -> str:
    """What a stopped job leaves to resume from, as the end of a sentence."""
    from pac.cluster.checkpoint import latest_checkpoint

    found, _ = latest_checkpoint(output / "checkpoint")
    if found is None:
        return ""
    return (f"; the last checkpoint is {found.directory} (epoch {found.position.epoch}, step {found.position.step}): "
            f"`{command} --resume` continues from it")


@click.command("train")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@home_option
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Use this plan (from `pacctl plan`) instead of [plan] file or planning now.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="pac", show_default=True,
              help="pac, or a baseline plan for comparison (pipeline-only; pipeline-ahead: the same with the "
                   "frozen layers running ahead; pipeline-best-order, data-only, single-device).")
@click.option("--no-cache", is_flag=True, help="Run every epoch through the backbone (no phase 2).")
@click.option("--timeout", "step_timeout", type=float, default=300.0, show_default=True,
              help="Seconds a device may wait for a tensor or an AllReduce before the job fails.")
@click.option("--lease", "lease_s", type=click.FloatRange(min=1.0), default=120.0, show_default=True,
              help="Seconds a device keeps the job without word from this command (renewed every quarter of "
                   "it): if this command dies, the devices release the job by themselves.")
@click.option("--deadline", "deadline_s", type=click.FloatRange(min=0.0), default=6.0, show_default=True,
              help="Seconds a device may stay silent before it is taken for lost: the job then goes on without "
                   "it on a new plan over the devices that remain (0: a lost device fails the job).")
@click.option("--resume", is_flag=True,
              help="Continue the stopped (or failed, or killed) job in the output directory from its newest "
                   "checkpoint, reusing the devices' kept activation caches; refused if the job changed.")
def command(job_file: Path, home: Path | None, plan_file: Path | None, strategy: str, no_cache: bool,
            step_timeout: float, lease_s: float, deadline_s: float, resume: bool) -> None:
    """Fine-tune across the home's devices as JOB_FILE says (docs/job.md): plan, phase 1 (pipeline),
    phase 2 (data parallel from the activation cache), evaluate; write the adapter, plan, metrics.json
    and plots to the job's output directory. Ctrl-C stops every device and keeps the last checkpoint
    (and the devices their caches): `--resume` continues from it."""
    from pac.cluster.controller import RunOptions, run_training
    from pac.cluster.progress import Progress
    from pac.jobfile import load_job
    from pac.planner.plan import Plan

    try:
        job = load_job(job_file)
        plan = Plan.load(plan_file) if plan_file else None
    except PacError as error:
        raise click.ClickException(str(error)) from error
    devices, identity, again = find_job_devices(job, home)
    click.echo(f"{len(devices)} device(s): " + ", ".join(f"{d.node_id} ({d.address})" for d in devices), err=True)
    output = job.output.directory
    pointer = jobs_dir(home)
    pointer.mkdir(parents=True, exist_ok=True)
    (pointer / "last.json").write_text(json.dumps({"output_dir": str(output), "job_file": str(job_file.resolve()),
                                                   "started_unix": time.time()}) + "\n")
    options = RunOptions(strategy=strategy, use_cache=False if no_cache else None, step_timeout_s=step_timeout,
                         lease_s=lease_s, resume=resume, deadline_s=deadline_s, find_devices=again)
    progress = Progress(stream=sys.stderr)
    try:
        metrics, _ = run_training(job, devices, identity, output, options, progress=progress,
                                  log_line=progress.message, plan=plan)
    except KeyboardInterrupt:
        progress.close()
        raise click.ClickException(f"stopped: every device released the job{kept_checkpoint(output)}") from None
    except PacError as error:
        progress.close()
        raise click.ClickException(f"{error}{kept_checkpoint(output)}") from error
    progress.close()
    evaluation = ", ".join(f"{k} {v:.4f}" for k, v in metrics["eval"].items()) or "no evaluation data"
    click.echo(f"done in {metrics['total_time_s']:.0f} s; epochs " +
               ", ".join(f"{t:.1f} s" for t in metrics["epoch_times_s"]) + f"; {evaluation}")
    click.echo(f"adapter: {output / 'adapter.safetensors'}; metrics, plan and plots in {output}")
    if job.output.deploy:
        from pacctl.commands.assistant import deploy_run, named

        targets = named(devices, job.output.deploy)
        if not targets:
            raise click.ClickException(f"{job.source}: output.deploy {job.output.deploy!r} names none of the job's "
                                       f"devices ({', '.join(d.node_id for d in devices)}); deploy by hand: "
                                       f"pacctl deploy {output} --device DEVICE")
        click.echo(deploy_run(output, targets[0], identity))


@click.command("status")
@home_option
@click.option("--out", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The job's output directory (default: the last job started from this controller).")
def status_command(home: Path | None, output_dir: Path | None) -> None:
    """Show the running (or last) training job: phase, epoch, step, loss, devices."""
    import os

    if output_dir is None:
        pointer = jobs_dir(home) / "last.json"
        if not pointer.exists():
            raise click.ClickException("no job was started from this controller (or give --out DIR)")
        output_dir = Path(json.loads(pointer.read_text())["output_dir"])
    path = output_dir / "status.json"
    if not path.exists():
        raise click.ClickException(f"{output_dir}: no status.json (not a job's output directory?)")
    status = json.loads(path.read_text())
    state = status.get("state", "?")
    if state in ("running", "preparing", "starting"):
        try:
            os.kill(int(status["pid"]), 0)
        except (OSError, KeyError, ValueError):
            state = "ended without finishing (the controller is gone)"
    age = time.time() - status.get("updated_unix", time.time())
    click.echo(f"job {status.get('job_id')}: {state} (updated {age:.0f} s ago), output {output_dir}")
    if "phase" in status:  # as the progress line says it: the step within the epoch, and of the job
        loss, epochs, steps = status.get("loss"), status.get("epochs"), status.get("epoch_steps")
        where = (f"epoch {status.get('epoch')}/{epochs}, step {status.get('epoch_step')}/{steps} "
                 f"({status.get('step')} of {epochs * steps} in all)") if epochs and steps else \
            f"epoch {status.get('epoch')}, step {status.get('step', '-')}"
        click.echo(f"  phase {status['phase']}, {where}" + (f", loss {loss:.4f}" if isinstance(loss, int | float) else ""))
    if status.get("devices"):
        click.echo(f"  devices: {', '.join(status['devices'])}")
    if status.get("checkpoint"):
        click.echo(f"  last checkpoint: {status['checkpoint']}")
    for fault in status.get("faults") or []:
        recovered = fault.get("recovered_s")
        click.echo(f"  lost {fault.get('device')} ({fault.get('address')}) in phase {fault.get('phase')} at step "
                   f"{fault.get('step')}: {fault.get('why')}; " + (
                       f"recovered in {recovered:.1f} s, {fault.get('steps_redone')} step(s) redone"
                       if isinstance(recovered, int | float) else "recovering"))
    for join in status.get("joins") or []:
        click.echo(f"  took {'in new device' if join.get('new') else 'back'} {join.get('device')} "
                   f"({join.get('address')}) at step {join.get('step')}")
    for resume in status.get("resumes") or []:
        redone = resume.get("steps_redone")
        click.echo(f"  resumed from {resume.get('checkpoint')} (step {resume.get('step')}; the stopped run had "
                   f"reached step {resume.get('stopped_at_step', '?')}"
                   + (f", {redone} step(s) redone)" if redone is not None else ")"))
    if status.get("total_time_s"):
        click.echo(f"  finished in {status['total_time_s']:.0f} s")
