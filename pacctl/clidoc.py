"""docs/cli.md, made from the commands' own help: `python -m pacctl.clidoc > docs/cli.md` (`make cli-docs`).

A unit test compares the committed file with what this prints, so the reference cannot drift from the
code.
"""

from __future__ import annotations

import click

# As `pacctl` itself names them (pacctl.cli's context_settings): click keeps a command's help option once
# made, so every context made here names it the same way, whatever ran before in the process.
HELP = ["-h", "--help"]

HEADER = """# Command reference

Generated from the commands' own `--help` by `make cli-docs` (`python -m pacctl.clidoc`); do not edit by
hand. `pacctl` runs on the controller, `pacd` on every device (docs/daemon.md).
"""


def _click_sections(command: click.Command, path: list[str], parent: click.Context | None) -> list[str]:
    ctx = click.Context(command, info_name=path[-1], parent=parent, terminal_width=100, max_content_width=100,
                        help_option_names=HELP)
    out = [f"## `{' '.join(path)}`\n\n```\n{command.get_help(ctx)}\n```\n"]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            out += _click_sections(command.get_command(ctx, name), [*path, name], ctx)
    return out


def _pacd_sections() -> list[str]:
    import argparse

    from pacd.cli import _parser

    parser = _parser()
    out = [f"## `pacd`\n\n```\n{parser.format_help()}```\n"]
    for action in parser._actions:  # the sub-commands' own parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(f"## `pacd {name}`\n\n```\n{sub.format_help()}```\n")
    return out


def reference() -> str:
    import os

    from pacctl.cli import cli

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: the same text on every machine
    try:
        return "\n".join([HEADER, *_click_sections(cli, ["pacctl"], None), *_pacd_sections()])
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns


if __name__ == "__main__":
    print(reference(), end="")


def missing_help() -> list[str]:
    """Every option or argument of pacctl and pacd that has no help text (none should)."""
    import argparse

    from pacctl.cli import cli
    from pacd.cli import _parser

    missing = []

    def walk(command: click.Command, path: str, parent: click.Context | None) -> None:
        ctx = click.Context(command, info_name=path.split()[-1], parent=parent, help_option_names=HELP)
        missing.extend(f"{path} {p.opts[0]}" for p in command.params
                       if isinstance(p, click.Option) and not p.help and not p.hidden)
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), f"{path} {name}", ctx)

    walk(cli, "pacctl", None)

    def actions(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    actions(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {action.option_strings[0] if action.option_strings else action.dest}")

    actions(_parser(), "pacd")
    return missing
