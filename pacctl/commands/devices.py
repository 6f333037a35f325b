"""`pacctl devices`: the daemons this controller can see, sorted by what can be done with them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import click

from pac.cluster.discover import find_home
from pac.discovery.records import DeviceRecord, Survey
from pac.errors import PacError
from pac.security.home import controller_identity, default_home
from pacctl.commands.init import home_option

discovery_options = [
    click.option("--peer", "peers", multiple=True, help="HOST:PORT of a device to ask directly (repeatable), "
                 "for networks where multicast does not pass"),
    click.option("--interface", "interfaces", multiple=True, help="address of the interface to browse on"),
    click.option("--timeout", type=float, default=2.0, show_default=True, help="seconds to listen on mDNS"),
    click.option("--no-mdns", is_flag=True, help="do not browse mDNS: ask only the --peer devices and the remembered ones"),
    click.option("--insecure", is_flag=True, help="talk plaintext to loopback development daemons"),
]


def with_discovery(function):
    for option in reversed(discovery_options):
        function = option(function)
    return home_option(function)


def discover(home: Path | None, peers, interfaces, timeout: float, no_mdns: bool, insecure: bool):
    """(survey, problems, cluster id) for the controller in `home`."""
    home = home or default_home()
    try:
        identity = None if insecure else controller_identity(home)
        found, problems = asyncio.run(find_home(home, identity, timeout, interfaces, peers, not no_mdns))
    except PacError as error:
        raise click.ClickException(str(error)) from error
    return found, problems, identity.cluster_id if identity else ""


def _line(r: DeviceRecord) -> str:
    return (f"  {r.node_id}  {r.address:<22} {r.memory_budget_bytes / 2**30:6.1f} GiB  {r.accelerator:<10} "
            f"{r.hostname} ({r.source})")


def _print(found: Survey, problems: list[str], cluster: str) -> None:
    click.echo(f"this cluster ({cluster or 'insecure'}): {len(found.ours)}")
    for record in found.ours:
        click.echo(_line(record))
    if found.unpaired:
        click.echo(f"not paired ({len(found.unpaired)}): pair with 'pacctl pair ADDRESS'")
        for record in found.unpaired:
            click.echo(_line(record))
    if found.other_clusters:
        click.echo(f"other clusters ({len(found.other_clusters)}): not used")
        for record in found.other_clusters:
            click.echo(_line(record) + f" cluster {record.cluster_id}")
    if found.revoked:
        click.echo(f"revoked ({len(found.revoked)}): unpaired by this home, not used; pair one again to use it")
        for record in found.revoked:
            click.echo(_line(record))
    for node_id, records in found.duplicates.items():
        click.echo(f"duplicate node id {node_id} at {', '.join(r.address for r in records)}: not used; "
                   "a state directory was copied: remove node_id and tls/ on one device, then pair it")
    for problem in problems:
        click.echo(f"problem: {problem}")


@click.command("devices")
@with_discovery
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def command(home, peers, interfaces, timeout, no_mdns, insecure, as_json) -> None:
    """List the devices found over mDNS, the ones this home remembers (pacctl pair) and --peer ones."""
    found, problems, cluster = discover(home, peers, interfaces, timeout, no_mdns, insecure)
    if as_json:
        click.echo(json.dumps({"cluster_id": cluster, **dataclasses.asdict(found), "problems": problems},
                              indent=1))
    else:
        _print(found, problems, cluster)
