"""Status lines for slow steps: on a terminal's stderr only, erased when done, silent in pipes and --json."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
from typer.testing import CliRunner

from tinyscale import progress
from tinyscale.cli import app
from tinyscale.search.fit import FitRequest, Measured, Memory, fit

runner = CliRunner()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_shows_each_step_rewritten_in_place_and_erases_it_at_the_end(monkeypatch):
    monkeypatch.setattr(progress, "SHOW_ELAPSED_AFTER", 0.0)
    terminal = FakeTerminal()
    with progress.status(stream=terminal, tick_seconds=0.01) as report:
        report("converting to int8")
        time.sleep(0.05)
        report("measuring the arena")
    text = terminal.getvalue()
    assert "\rconverting" not in text  # every draw clears the line first
    assert f"{progress.ERASE_LINE}converting to int8 ... 0 s" in text
    assert f"{progress.ERASE_LINE}measuring the arena ..." in text
    assert text.index("converting") < text.index("measuring")
    assert "\n" not in text and text.endswith(progress.ERASE_LINE)


@pytest.mark.parametrize("stream, enabled", [(io.StringIO(), True), (FakeTerminal(), False)])
def test_pipes_and_disabled_status_write_nothing(stream, enabled):
    with progress.status(enabled=enabled, stream=stream, tick_seconds=0.01) as report:
        report("converting to int8")
        time.sleep(0.03)
    assert stream.getvalue() == ""


def test_a_nested_status_is_silent_and_output_erases_the_line_first():
    terminal = FakeTerminal()
    with progress.status(stream=terminal, tick_seconds=60) as outer:
        outer("fitting")
        with progress.status(stream=terminal) as inner:
            inner("inner step")
        progress.before_output()
        terminal.write("a log line\n")
    text = terminal.getvalue()
    assert "inner step" not in text
    assert text.index("fitting") < text.rindex(progress.ERASE_LINE + "a log line\n")


def test_the_fitter_reports_its_slow_steps(synthetic_target):
    def estimator(spec):
        return Memory(model_bytes=spec.resolution * 4_000, arena_bytes=spec.resolution * 500)

    def measurer(spec):
        return Measured(**vars(estimator(spec)))

    steps: list[str] = []
    fit(FitRequest(synthetic_target(600_000, 200_000)), prove_next=True, estimator=estimator, measurer=measurer,
        progress=steps.append)
    assert steps[0].startswith("searching phi")
    assert any(step.startswith("verifying phi=") for step in steps), steps
    assert any(step.startswith("proving next phi=") for step in steps), steps


def _scale(*extra: str):
    return runner.invoke(app, ["scale", "--phi", "-9", "--classes", "4", "--measure", *extra])


@pytest.mark.slow
def test_scale_measure_on_a_terminal_shows_progress_without_changing_the_output(monkeypatch):
    piped, piped_json = _scale(), _scale("--json")
    assert piped.exit_code == 0 and piped.stderr == "" and piped_json.stderr == ""
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    on_terminal, on_terminal_json = _scale(), _scale("--json")
    assert on_terminal.stdout == piped.stdout
    assert "converting the" in on_terminal.stderr and "measuring the minimal arena in TFLM" in on_terminal.stderr
    assert on_terminal.stderr.endswith(progress.ERASE_LINE)  # nothing left on the terminal
    assert on_terminal_json.stderr == "" and json.loads(on_terminal_json.stdout) == json.loads(piped_json.stdout)


def test_a_warning_during_a_status_starts_on_its_own_line(monkeypatch):
    """The CLI's log handler erases the status line before writing a record."""
    from tinyscale.commands.app import _configure_logging

    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    restore = _configure_logging(verbose=False)
    try:
        with progress.status(tick_seconds=60) as report:
            report("loading images")
            logging.getLogger("tinyscale.training.data").warning("skipped 1 unreadable image")
    finally:
        restore()  # the CLI's handler goes and the logger propagates again, as after a command
    assert f"loading images ...{progress.ERASE_LINE}WARNING: skipped 1 unreadable image\n" in terminal.getvalue()


def test_training_status_names_the_epoch_that_runs_next():
    from tinyscale.commands.pipeline import _epoch_status
    from tinyscale.training.train import EpochReport

    def report(epoch: int, step: int | None = None) -> EpochReport:
        return EpochReport(epoch=epoch, epochs=3, loss=1.0, accuracy=0.5, val_loss=1.0, val_accuracy=0.5,
                           seconds=1.0, step=step, steps=None if step is None else 10)

    assert _epoch_status(report(1, step=5)) == "training epoch 1/3"  # still inside epoch 1
    assert _epoch_status(report(1)) == "training epoch 2/3"
    assert _epoch_status(report(3)) == "finishing training"
