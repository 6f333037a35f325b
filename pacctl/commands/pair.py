"""`pacctl pair HOST:PORT`: join a device to the home cluster after a person confirms its code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from pac.discovery.records import parse_peer
from pac.errors import PacError
from pac.net.daemon_client import pair
from pac.security.home import default_home
from pacctl.commands.init import home_option


@click.command("pair")
@click.argument("address")
@home_option
@click.option("--code", help="the code the device printed (asked for if not given)")
def command(address: str, home: Path | None, code: str | None) -> None:
    """Pair the device at ADDRESS (host:port); it shows a one-time code in its log ('pacd info')."""
    try:
        host, port = parse_peer(address)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="ADDRESS") from error

    def ask(info: dict) -> str:
        click.echo(f"device {info['node_id']} ({info['hostname']}, {info['accelerator']}, "
                   f"{info['memory_budget_bytes'] / 2**30:.1f} GiB offered)")
        return code or click.prompt("pairing code shown by the device")

    try:
        info = asyncio.run(pair(host, port, home or default_home(), ask))
    except (PacError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"paired: device {info['node_id']} joined cluster {info['cluster_id']}")
