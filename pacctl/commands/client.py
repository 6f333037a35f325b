"""`pacctl client`: certificates for home-automation clients (Home Assistant, scripts) that only ask."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from pac.errors import PacError
from pac.security.home import add_client, clients_dir, default_home, list_clients
from pacctl.commands.init import home_option


@click.group("client")
def command() -> None:
    """Certificates for home-automation clients: role "assistant" may ask the household's model
    (Assistant.Generate, Classify, ListModels; Device.GetInfo, health, reflection) and nothing else."""


@command.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["assistant"]), default="assistant", show_default=True)
@home_option
def add(name: str, role: str, home: Path | None) -> None:
    """Issue a certificate for the client NAME (kept owner-only in HOME/clients/NAME/tls)."""
    home = home or default_home()
    try:
        client = add_client(home, name, role)
    except PacError as error:
        raise click.ClickException(str(error)) from error
    where = clients_dir(home) / name / "tls"
    click.echo(f"client {name} ({role}, id {client.node_id}): key.pem, cert.pem and ca.pem in {where}")
    click.echo(f"give the client those three files; e.g. python examples/ask.py HOST:7443 \"...\" "
               f"--home {clients_dir(home) / name}")


@command.command("list")
@home_option
def list_(home: Path | None) -> None:
    """The clients this home issued certificates to."""
    clients = list_clients(home or default_home())
    for name, identity in clients:
        click.echo(f"  {name:<24} {identity.role:<10} id {identity.node_id}")
    if not clients:
        click.echo("no clients (pacctl client add NAME)")


@command.command("remove")
@click.argument("name")
@home_option
def remove(name: str, home: Path | None) -> None:
    """Delete the client NAME's files here. Its certificate stays valid where it was copied until it
    expires: the daemons do not check a revocation list yet."""
    where = clients_dir(home or default_home()) / name
    if not where.is_dir():
        raise click.ClickException(f"no client named {name!r} in {where.parent}")
    shutil.rmtree(where)
    click.echo(f"removed {name}; a copy of its certificate elsewhere stays valid until it expires "
               f"(no revocation list yet)")
