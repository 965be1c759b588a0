"""The Typer app every command module registers on, and how a command's failure reaches the user.

Every command body runs under :func:`reports_errors`, which turns a
:class:`TinyscaleError` into one line on stderr and the error's exit code.
This module imports no command module: they import it and add their commands,
and :mod:`tinyscale.cli` imports them all (in a fixed order) before it runs the app.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import sys
from typing import Callable, TypeVar

import typer

from tinyscale import __version__
from tinyscale.errors import TinyscaleError

app = typer.Typer(
    name="tinyscale",
    help="Fit compound-scaled EfficientNets to microcontrollers and generate TFLite Micro firmware.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich's option table truncates names and defaults with
    # "…" at 80 columns; click's formatter wraps the help text instead.
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., object])


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, `kill`, a closing session), raised where Python runs next so that
    it unwinds like Ctrl-C: staging folders are removed, a training's checkpoint is named."""


TERMINATED_EXIT = 128 + signal.SIGTERM  # 143, the shell's code for a process SIGTERM ended


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler `tinyscale.cli.main` installs."""
    raise Terminated()


BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE  # 141, what `cmd | head` gives a tool that SIGPIPE ended


def _stdout_is_closed() -> bool:
    """Whether a BrokenPipeError was stdout's reader going away (`tinyscale targets | head`), not a
    pipe of our own (a worker process). A pipe whose reader is gone polls as an error; a file, a
    terminal or a live pipe does not. (Flushing does not tell: the failed write dropped the buffer.)"""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no real stdout
        return False


def _quiet_closed_stdout() -> None:
    # Python flushes stdout again at exit and would print "Exception ignored ... BrokenPipeError".
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _notes(exc: BaseException) -> str:
    """What the code added on the way up (exc.add_note), kept on the same line."""
    return "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))


def reports_errors(func: F) -> F:
    """Turn library errors into one stderr line and an exit code (never a traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TinyscaleError as exc:
            typer.echo(f"error: {exc}{_notes(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except Terminated as exc:
            typer.echo(f"error: terminated{_notes(exc)}", err=True)
            raise typer.Exit(TERMINATED_EXIT) from None
        except KeyboardInterrupt as exc:
            typer.echo(f"error: interrupted{_notes(exc)}", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: still one line, details on request
            if isinstance(exc, BrokenPipeError) and _stdout_is_closed():
                # The reader has what it wanted: no message, and the exit status a Unix tool gets.
                _quiet_closed_stdout()
                raise typer.Exit(BROKEN_PIPE_EXIT) from None
            if os.environ.get("TINYSCALE_DEBUG"):
                raise
            typer.echo(
                f"error: internal error ({type(exc).__name__}: {exc}){_notes(exc)}; rerun with TINYSCALE_DEBUG=1"
                " for details",
                err=True,
            )
            raise typer.Exit(70) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tinyscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    ctx.call_on_close(_configure_logging(verbose))


class _StatusAwareHandler(logging.StreamHandler):
    """A log record erases a status line in progress first, so it starts at column 0."""

    def emit(self, record: logging.LogRecord) -> None:
        from tinyscale.progress import before_output  # noqa: PLC0415

        before_output()
        super().emit(record)


def _configure_logging(verbose: bool) -> Callable[[], None]:
    """Send the library's log records to the current stderr, once per invocation.

    A handler on the "tinyscale" logger (not the root) so that warnings reach
    the user even when something else (a test runner) already configured root.
    The logger stops propagating while the command runs: TensorFlow's import
    configures a root handler, which would print every record a second time.
    Returns the undo, run when the command ends, so an embedding program (or a
    test's log capture on root) gets its records back afterwards.
    """
    logger = logging.getLogger("tinyscale")
    for handler in list(logger.handlers):
        if getattr(handler, "tinyscale_cli", False):
            logger.removeHandler(handler)
    handler = _StatusAwareHandler(sys.stderr)
    handler.tinyscale_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

    return restore
