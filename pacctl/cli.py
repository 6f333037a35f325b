"""`pacctl`: the controller. Finds the daemons, profiles them, plans the job and drives it.

Each sub-command lives in its own module under `pacctl/commands/`, imported when the command runs (so a
command that needs no PyTorch starts without importing it); this file only names them.
Errors a person can act on are raised as `click.ClickException` (one line, exit code 1); a traceback
is printed only with `--debug`.
"""

from __future__ import annotations

import importlib
import os
import sys

# gRPC's informational logs (e.g. the handshakes a daemon refuses while it restarts after pairing) are
# noise on a controller's terminal; errors still show. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("TQDM_DISABLE", "1")  # model loaders' progress bars would garble the progress line

import click

# Each command: the module under pacctl/commands and the click.Command (or Group) in it.
COMMANDS = {
    "init": "init:command", "pair": "pair:command", "unpair": "pair:unpair_command", "renew": "pair:renew_command", "devices": "devices:command",
    "profile": "profile:command", "plan": "plan:command", "job": "job:command", "train": "train:command",
    "status": "train:status_command", "finetune": "finetune:command", "demo": "demo:command",
    "deploy": "assistant:command", "ask": "assistant:ask_command", "models": "assistant:models_command",
    "client": "client:command",
}


class Commands(click.Group):
    """The commands of COMMANDS, each module imported when its command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(f"pacctl.commands.{module}"), attribute)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pac", prog_name="pacctl", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, help="Print full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """PAC controller: fine-tune a household's language model on the devices it owns."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug



def main(argv: list[str] | None = None) -> int:
    from pac.errors import PacError

    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="pacctl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except PacError as error:  # one line a person can act on; the traceback with --debug
        if "--debug" in args:
            raise
        click.echo(f"Error: {error}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
