"""The `tinyscale` command line: the app of :mod:`tinyscale.commands.app` with every command registered.

Thin commands over the Python API live in :mod:`tinyscale.commands`; importing
this module registers them all, and :func:`main` is the console entry point.
"""

from __future__ import annotations

import signal
import sys

import typer

from tinyscale.commands import core, firmware, patch, pipeline, tune  # noqa: F401 - each registers its commands, in this order
from tinyscale.commands.app import app, raise_terminated


def _full_short_help() -> None:
    """List each command with its whole first docstring line, wrapped, not cut with "..."."""
    for info in app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = doc.strip().splitlines()[0]


_full_short_help()


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """Usage-error bases: Typer >= 0.25 ships its own click fork beside click itself."""
    types: list[type[BaseException]] = []
    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:  # older Typer: plain click
        pass
    else:
        types.append(TyperClickException)
    try:
        import click
    except ImportError:
        pass
    else:
        types.append(click.ClickException)
    return tuple(types)


def main() -> None:
    """Console entry point: click's usage errors also become one line on stderr."""
    # Not inherited by tinyscale's worker processes: they are spawned or exec'd, never forked.
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        result = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    except _click_exception_types() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `tinyscale`: the help, as for --help
            typer.echo(exc.format_message())
            sys.exit(0)
        context = getattr(exc, "ctx", None)
        command = f"{context.command_path} --help" if context else "tinyscale --help"
        # Typer's validation words a bad choice "Invalid value for '--base': Value error, 'x' is not one of ...".
        message = exc.format_message().replace(": Value error, ", ": ")
        typer.echo(f"error: {message} (see '{command}')", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
