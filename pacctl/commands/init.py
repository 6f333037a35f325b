"""`pacctl init`: create the home cluster's certificate authority and the controller's identity."""

from __future__ import annotations

from pathlib import Path

import click

from pac.errors import PacError
from pac.security.home import default_home, init_home

home_option = click.option("--home", type=click.Path(path_type=Path), default=None,
                           help="controller directory (default $PAC_HOME or ~/.config/pac)")


@click.command("init")
@home_option
@click.option("--force", is_flag=True, help="replace an existing cluster (every device must pair again)")
def command(home: Path | None, force: bool) -> None:
    """Create a new home cluster: its authority (kept owner-only in HOME/ca) and this controller's key."""
    home = home or default_home()
    try:
        me = init_home(home, force)
    except PacError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"cluster {me.cluster_id} created in {home}")
    click.echo("next: on each device run 'pacd serve', then here 'pacctl pair HOST:PORT' with the code it prints")
