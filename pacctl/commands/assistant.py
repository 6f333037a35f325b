"""`pacctl deploy`, `pacctl ask`, `pacctl models`: put a tuned model on a device and use it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pac.discovery.records import DeviceRecord
from pac.errors import PacError
from pac.net.assistant_client import AssistantClient, Usage
from pac.security.home import controller_identity, default_home
from pacctl.commands.devices import discover, with_discovery

if TYPE_CHECKING:
    from pac.assistant.store import Provenance


def pick_device(home, peers, interfaces, timeout, no_mdns, insecure, wanted: str | None) -> DeviceRecord:
    """The device named by `wanted` (node id or its prefix, hostname or HOST:PORT); else the only one, or
    the one with the most memory."""
    found, problems, _ = discover(home, peers, interfaces, timeout, no_mdns, insecure)
    devices = found.ours + (found.unpaired if insecure else [])
    if wanted:
        devices = named(devices, wanted)
    if not devices:
        where = f" named {wanted!r}" if wanted else ""
        hint = f": {'; '.join(problems)}" if problems else " (try --peer HOST:PORT; pacctl devices lists them)"
        raise click.ClickException(f"no device of this cluster{where} found{hint}")
    return max(devices, key=lambda d: d.memory_budget_bytes)


def identity_for(home, insecure: bool):
    """The controller's identity (None: insecure loopback development)."""
    return None if insecure else controller_identity(home or default_home())


def client_for(device, identity) -> AssistantClient:
    """`device` (a DeviceRecord or pac.cluster.context.Device) as `identity` sees it."""
    return AssistantClient(device.address, identity, device.node_id if identity else None)


def named(devices: list, wanted: str) -> list:
    """The devices (DeviceRecord or pac.cluster.context.Device) that `wanted` names: a node id or its
    start, a hostname or HOST:PORT."""
    return [d for d in devices if d.node_id.startswith(wanted) or wanted in (d.hostname, d.address)]


def provenance(run: Path, name: str | None, labels: str | None) -> Provenance:
    """What a run directory of `pacctl train` / `pacctl finetune` says about its adapter."""
    from pac.assistant.store import Provenance  # torch: imported when deploying, not by every pacctl

    path = run / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    evaluation = data.get("eval") or {}
    metrics = {k: float(v) for k, v in evaluation.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return Provenance(name=name or run.resolve().name, quantization=str(data.get("quantization", "")),
                      labels=tuple(labels.split(",")) if labels else (), job_id=str(data.get("job_id", "")),
                      trained_at_unix=(run / "adapter.safetensors").stat().st_mtime, metrics=metrics)


def deploy_run(run: Path, device, identity, name: str | None = None, labels: str | None = None) -> str:
    """Send RUN/adapter.safetensors to `device` (as `identity`; None: insecure loopback); a line saying
    what it serves now."""
    adapter = run / "adapter.safetensors"
    if not adapter.is_file():
        raise click.ClickException(f"{run}: no adapter.safetensors (the output of pacctl train or pacctl finetune)")

    async def send():
        async with client_for(device, identity) as c:
            return await c.deploy(adapter, provenance(run, name, labels))

    try:
        model, replaced = asyncio.run(send())
    except PacError as error:
        raise click.ClickException(str(error)) from error
    verb = "updated" if replaced else "deployed"
    return (f"{verb} {model.id} ({model.name}: {model.task} on {model.backbone}) to {device.node_id} "
            f"({device.hostname or device.address}); ask it: pacctl ask \"...\" --device {device.node_id[:8]}")


device_option = click.option("--device", help="node id (or its start), hostname or HOST:PORT of the device")


@click.command("deploy")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@device_option
@click.option("--name", help="what to call the model on the device (default: the run directory's name)")
@click.option("--labels", help="comma-separated label names of a classification adapter, in class order")
@with_discovery
def command(run, device, name, labels, home, peers, interfaces, timeout, no_mdns, insecure) -> None:
    """Deploy the adapter of RUN (a pacctl train / finetune output directory) to a device's Assistant."""
    target = pick_device(home, peers, interfaces, timeout, no_mdns, insecure, device)
    click.echo(deploy_run(run, target, identity_for(home, insecure), name, labels))


@click.command("ask")
@click.argument("question")
@device_option
@click.option("--model", default="", help="a deployed model's id or name (default: the newest chat model)")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Longest answer, in tokens.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="With a temperature: sample from the smallest set of tokens this likely.")
@click.option("--seed", type=int, help="with a temperature: the same seed gives the same answer")
@click.option("--system", help="a system instruction before the question")
@with_discovery
def ask_command(question, device, model, max_new_tokens, temperature, top_p, seed, system, home, peers, interfaces,
                timeout, no_mdns, insecure) -> None:
    """Ask the household's tuned model QUESTION; the answer streams as it is decoded."""
    try:
        from pac.assistant.messages import Sampling

        sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    except PacError as error:
        raise click.ClickException(str(error)) from error
    target = pick_device(home, peers, interfaces, timeout, no_mdns, insecure, device)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]

    async def run() -> Usage | None:
        usage = None
        async with client_for(target, identity_for(home, insecure)) as c:
            async for item in c.generate(messages, sampling, model):
                if isinstance(item, Usage):
                    usage = item
                else:
                    sys.stdout.write(item)
                    sys.stdout.flush()
        return usage

    try:
        usage = asyncio.run(run())
    except PacError as error:
        raise click.ClickException(str(error)) from error
    click.echo("")
    if usage is not None:
        rate = usage.generated_tokens / usage.seconds if usage.seconds else 0.0
        click.echo(f"({usage.model}: {usage.generated_tokens} tokens, first after {usage.time_to_first_token_s:.2f} s, "
                   f"{rate:.1f} tokens/s)", err=True)


@click.command("models")
@device_option
@with_discovery
def models_command(device, home, peers, interfaces, timeout, no_mdns, insecure) -> None:
    """List the models a device serves."""
    target = pick_device(home, peers, interfaces, timeout, no_mdns, insecure, device)

    async def run():
        async with client_for(target, identity_for(home, insecure)) as c:
            return await c.list_models()

    try:
        models = asyncio.run(run())
    except PacError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{target.node_id} ({target.hostname or target.address}): {len(models)} model(s)")
    for m in models:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(m.metrics.items()))
        click.echo(f"  {m.id}  {m.name:<24} {m.task:<14} {m.backbone} ({m.quantization})"
                   + (f"  job {m.job_id}" if m.job_id else "") + (f"  {scores}" if scores else ""))
