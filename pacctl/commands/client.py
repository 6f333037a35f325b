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
@click.option("--role", type=click.Choice(["assistant"]), default="assistant", show_default=True,
              help="What the certificate may call: assistant asks the household's model (docs/security.md).")
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
    """Revoke the client NAME's certificate and delete its files here: every device of the home this
    command reaches refuses it from now on, the others as soon as any later command reaches them."""
    import asyncio

    from cryptography import x509

    from pac.cluster.discover import find_home
    from pac.errors import PacError
    from pac.security.home import controller_identity, load_authority
    from pac.security.revocation import revoke

    home = home or default_home()
    where = clients_dir(home) / name
    if not where.is_dir():
        raise click.ClickException(f"no client named {name!r} in {where.parent}")
    try:
        certificate = x509.load_pem_x509_certificate((where / "tls" / "cert.pem").read_bytes())
        ca_key, ca_cert, _ = load_authority(home)
        revoke(home, ca_key, ca_cert, f"client {name}", certificate.serial_number)
        shutil.rmtree(where)
        _, problems = asyncio.run(find_home(home, controller_identity(home)))  # sends the list to the devices
    except (PacError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"removed {name}: its certificate is revoked")
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
