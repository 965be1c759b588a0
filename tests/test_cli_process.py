"""The CLI as a real process: its modules import in any order, and a closed stdout is not an error."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

import pytest

import tinyscale.commands

COMMAND_MODULES = sorted(f"tinyscale.commands.{m.name}" for m in pkgutil.iter_modules(tinyscale.commands.__path__))


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_each_command_module_imports_on_its_own_in_a_fresh_interpreter(module):
    # A library user may import any of them first; `tinyscale.cli` must not be a prerequisite.
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_app_imports_no_command_module():
    # Commands register on the app; the app never imports them back (no import cycle to order around).
    probe = ("import sys, tinyscale.commands.app\n"
             "print(sorted(m for m in sys.modules if m.startswith('tinyscale.commands.')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['tinyscale.commands.app']"


def test_importing_the_cli_registers_every_command():
    probe = "from tinyscale.cli import app\nprint(' '.join(c.name or c.callback.__name__ for c in app.registered_commands))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {"fit", "scale", "train", "convert", "simulate", "firmware", "build", "tune", "targets"} <= set(done.stdout.split())


def _run_with_closed_stdout(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`tinyscale ARGS | head -0`, without a race: the pipe's reader is closed before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "tinyscale", *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120, env=env)
    finally:
        os.close(write_end)


def test_a_reader_that_stops_early_gets_no_error_and_the_sigpipe_exit_status():
    done = _run_with_closed_stdout("targets")
    assert done.stderr == ""
    assert done.returncode == 141  # 128 + SIGPIPE, as `cat` or `git log` piped into `head`


def test_a_broken_pipe_that_is_not_stdout_is_still_reported(tmp_path):
    # The check is on stdout itself: with stdout a file, a BrokenPipeError is a bug, reported as one.
    script = tmp_path / "broken.py"
    script.write_text(
        "import sys\n"
        "from tinyscale.commands.app import reports_errors\n"
        "@reports_errors\n"
        "def command():\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "try:\n"
        "    command()\n"
        "except BaseException as exc:\n"
        "    sys.exit(getattr(exc, 'exit_code', 99))\n"
    )
    with open(tmp_path / "out.txt", "w") as out:
        done = subprocess.run([sys.executable, str(script)], stdout=out, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    assert done.returncode == 70
    assert done.stderr.startswith("error: internal error (BrokenPipeError")


def test_a_bad_choice_names_the_option_and_the_choices_in_plain_words():
    done = subprocess.run([sys.executable, "-m", "tinyscale", "fit", "--target", "esp32", "--patch", "sideways"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    # `python -m tinyscale` is the program's name here, so the hint reads "(see 'python -m tinyscale fit --help')".
    assert done.stderr.startswith("error: Invalid value for '--patch': 'sideways' is not one of 'auto', 'off'. (see ")
    assert done.stderr.endswith("tinyscale fit --help')\n") and done.stderr.count("\n") == 1
