"""A status line on stderr for slow steps, shown only to a person at a terminal.

Library code takes a plain ``progress(text)`` callback (default: none) and
never writes to a stream itself; the CLI opens :func:`status` around a slow
step and passes the callback down. On a terminal the line reads
``converting to int8 ... 4 s``, is rewritten in place (``\\r``) as the step
advances and the clock ticks, and is erased when the step ends, so the
command's real output is the same as without it. When stderr is a pipe or a
file (scripts, CI, ``2> log``) nothing at all is written.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

Progress = Callable[[str], None]

ERASE_LINE = "\r\033[K"  # back to column 0, clear to the end of the line
TICK_SECONDS = 0.5
# Elapsed time appears once a step has run this long: quick steps stay quiet.
SHOW_ELAPSED_AFTER = 1.0

_lock = threading.Lock()
_active: "_StatusLine | None" = None


def no_progress(text: str) -> None:
    """The callback library functions use when nobody is watching."""


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _StatusLine:
    """One rewritten line: the current step's text and how long it has run."""

    def __init__(self, stream: TextIO, tick_seconds: float) -> None:
        self.stream = stream
        self.text = ""
        self.since = time.monotonic()
        self._shown = ""  # what the terminal shows now: redraw only on a change
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(tick_seconds,), daemon=True,
                                        name="tinyscale-status")

    def start(self) -> None:
        self._ticker.start()

    def update(self, text: str) -> None:
        with _lock:
            self.text, self.since = text, time.monotonic()
            self._draw()

    def _tick(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            with _lock:
                self._draw()

    def _draw(self) -> None:
        if not self.text:
            return
        elapsed = time.monotonic() - self.since
        line = f"{self.text} ..." + (f" {elapsed:.0f} s" if elapsed >= SHOW_ELAPSED_AFTER else "")
        # A line wider than the terminal wraps, and \r would then rewrite only its last row.
        width = shutil.get_terminal_size().columns - 1
        line = line if len(line) <= width else line[: max(0, width - 1)] + "…"
        if line != self._shown:
            self._write(ERASE_LINE + line)
            self._shown = line

    def erase(self) -> None:
        """Clear the line if it shows anything (the caller holds the lock); the next tick redraws it."""
        if self._shown:
            self._write(ERASE_LINE)
            self._shown = ""

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not break the command
            self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        with _lock:
            self.erase()


@contextmanager
def status(enabled: bool = True, stream: TextIO | None = None,
           tick_seconds: float = TICK_SECONDS) -> Iterator[Progress]:
    """A ``progress(text)`` callback that shows `text` on a terminal's stderr until the block ends.

    Disabled (a callback that does nothing) when `enabled` is false (``--json``)
    or the stream is not a terminal. Blocks do not nest: an inner one is silent.
    """
    global _active
    stream = stream or sys.stderr
    if not enabled or not _is_terminal(stream) or _active is not None:
        yield no_progress
        return
    line = _StatusLine(stream, tick_seconds)
    _active = line
    line.start()
    try:
        yield line.update
    finally:
        _active = None
        line.close()


def before_output() -> None:
    """Erase an active status line so that a log record or message starts at column 0."""
    with _lock:
        if _active is not None:
            _active.erase()
