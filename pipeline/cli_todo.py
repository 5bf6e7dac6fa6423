"""Fusion commands, until the fusion issue lands: they say so and exit with code 2."""

from __future__ import annotations

from collections.abc import Callable

import typer

todo_commands = typer.Typer(no_args_is_help=True)
_LOOSE = {"allow_extra_args": True, "ignore_unknown_options": True}


def _todo(what: str) -> Callable[[typer.Context], None]:
    def command(ctx: typer.Context) -> None:
        typer.secho(f"`mer {what}` is not yet implemented in this version of mer.", err=True, fg="yellow")
        raise typer.Exit(2)

    return command


for _name in ("selftrain", "vote"):
    todo_commands.command(_name, help=f"Fusion: {_name} (not yet implemented).",
                          context_settings=_LOOSE)(_todo(f"fuse {_name}"))
