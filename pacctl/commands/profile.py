"""`pacctl profile`: measure a model on every device of the cluster and the links between them."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import click

from pac.cluster.measure import probe_home
from pac.discovery.records import DeviceRecord
from pac.errors import PacError
from pac.formats import QUANTIZATIONS
from pac.net.daemon_client import DaemonClient
from pac.security import Identity
from pac.security.home import controller_identity, default_home
from pacctl.commands.devices import discover, with_discovery
from pacd.homeprofile import home_document, with_host


async def _profile_all(devices: list[DeviceRecord], identity: Identity | None, model: str, sizes: list[int],
                       seq_len: int, factor: int, refresh: bool, timeout: float, quantization: str = "none"):
    async def one(device: DeviceRecord):
        async with DaemonClient(device.address, identity, device.node_id if identity else None) as client:
            info = await client.info()
            profile = await client.profile(model, sizes, seq_len, factor, refresh, timeout, quantization)
            return with_host(profile, info), info["disk_free_bytes"]

    async def link(a: DeviceRecord, b: DeviceRecord):
        async with DaemonClient(a.address, identity, a.node_id if identity else None) as client:
            return await client.probe(b.address, b.node_id if identity else "")

    measured = await asyncio.gather(*(one(d) for d in devices))  # each device measures itself
    links = [await link(a, b) for a, b in itertools.combinations(devices, 2)]  # one at a time: shared links
    return [p for p, _ in measured], {p["node_id"]: disk for p, disk in measured}, links


@click.command("profile")
@click.argument("model")
@with_discovery
@click.option("--batch-sizes", default="1,4,8", show_default=True, help="comma-separated batch sizes")
@click.option("--seq-len", type=int, default=128, show_default=True, help="Tokens per sample the job will use.")
@click.option("--reduction-factor", type=int, default=8, show_default=True,
              help="k of the job's side network (width d/k).")
@click.option("--quantization", type=click.Choice(list(QUANTIZATIONS)), default="none", show_default=True,
              help="measure the backbone as a job with this model.quantization holds it")
@click.option("--refresh", is_flag=True, help="measure again even where a stored result exists")
@click.option("--profile-timeout", type=float, default=3600.0, show_default=True,
              help="deadline in seconds for one device's measurement")
@click.option("--out", type=click.Path(path_type=Path), help="write the planner's profile JSON here")
@click.option("--raw", type=click.Path(path_type=Path), help="write every device's full measurement here")
def command(model, home, peers, interfaces, timeout, no_mdns, insecure, batch_sizes, seq_len, reduction_factor,
            quantization, refresh, profile_timeout, out, raw) -> None:
    """Profile MODEL (e.g. minilm, smollm2-135m) on every device of this cluster, and their links."""
    try:
        sizes = [int(s) for s in batch_sizes.split(",")]
    except ValueError as error:
        raise click.BadParameter(f"{batch_sizes!r} is not a comma-separated list of integers",
                                 param_hint="--batch-sizes") from error
    found, problems, _ = discover(home, peers, interfaces, timeout, no_mdns, insecure)
    devices = found.ours + (found.unpaired if insecure else [])
    if not devices:
        raise click.ClickException("no device of this cluster found" + (f": {'; '.join(problems)}" if problems
                                                                         else " (try --peer HOST:PORT)"))
    identity = None if insecure else controller_identity(home or default_home())
    try:
        profiles, disks, links = asyncio.run(_profile_all(devices, identity, model, sizes, seq_len,
                                                          reduction_factor, refresh, profile_timeout,
                                                          quantization))
        # the controller's round trips and the ring's own time per step, beyond the links (the planner costs them)
        document = asyncio.run(probe_home(home_document(profiles, disks, links), devices, identity))
    except (PacError, ValueError, KeyError) as error:
        raise click.ClickException(str(error)) from error
    for profile in profiles:
        source = "stored" if profile["from_store"] else f"measured in {profile['elapsed_s']:.1f} s"
        click.echo(f"{profile['node_id']}: {model} ({source})")
    for link in links:
        click.echo(f"{link['source']} <-> {link['target']}: rtt {link['rtt_s'] * 1e3:.2f} ms, "
                   f"{link['bandwidth_bytes_per_s'] / 1e6:.1f} MB/s")
    if "allreduce_probe" in document:
        probe = document["allreduce_probe"]
        click.echo(f"ring AllReduce of {probe['bytes'] // 1024} KiB among {len(probe['members'])} devices: "
                   f"{probe['seconds'] * 1e3:.2f} ms")
    if raw:
        raw.write_text(json.dumps({"profiles": profiles, "links": links}, indent=1))
    if out:
        out.write_text(json.dumps(document, indent=1))
        click.echo(f"planner profile written to {out}")
