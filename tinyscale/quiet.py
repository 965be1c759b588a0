"""Silence TensorFlow, Keras and absl at the file-descriptor level.

TFLiteConverter prints thousands of lines (Keras "Saved artifact" listings,
absl/MLIR logs) straight from C++ to fds 1 and 2, where Python's
``sys.stdout`` redirection cannot reach. We point both fds at a temporary file
for the duration and keep the text, so a failed conversion can quote it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

# Read by TensorFlow's C++ logging when TF is first imported; set on import of
# this module (before any lazy `import tensorflow`) so the banner never appears.
_QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",  # also avoids oneDNN's nondeterministic rounding notice
    "ABSL_MIN_LOG_LEVEL": "3",
    "GLOG_minloglevel": "3",
}


def set_quiet_environment() -> None:
    """Set TF's logging variables unless the user chose their own values."""
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


set_quiet_environment()


@dataclass
class Captured:
    """The text written to fds 1 and 2 inside the block (filled in on exit)."""

    text: str = ""

    def last_lines(self, count: int = 5) -> str:
        lines = [line for line in self.text.splitlines() if line.strip()]
        return "\n".join(lines[-count:])


@contextlib.contextmanager
def capture_fds() -> Iterator[Captured]:
    """Redirect fds 1 and 2 to a temp file; restore them even on exceptions."""
    captured = Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[Captured]:
    """Silence TF/Keras/absl output (C++ and Python) for the block.

    Yields a :class:`Captured` whose ``text`` holds everything that was printed,
    available once the block exits (also when it exits by an exception).
    """
    set_quiet_environment()
    with capture_fds() as captured:
        yield captured
