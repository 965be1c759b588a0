"""One error tree for the whole tool.

Library code raises a subclass of :class:`TinyscaleError`; the CLI turns any of
them into one line on stderr and the exit code the class carries.
"""

from __future__ import annotations


def one_line(text: str, limit: int = 300) -> str:
    """`text` (a library's or a worker's message, often multi-line) as one error line of at most `limit`."""
    return " ".join(str(text).split())[:limit]


class TinyscaleError(Exception):
    """Base class of every error tinyscale reports to a user."""

    exit_code = 1


class UsageError(TinyscaleError):
    """Bad option values or combinations (invalid coefficients, unknown base)."""

    exit_code = 2


class TargetError(TinyscaleError):
    """A target file that is missing, unknown or fails its schema."""

    exit_code = 2


class CostTableError(TargetError):
    """A latency cost table (costs/latency/*.toml) that is unreadable or fails its schema."""


class DoesNotFitError(TinyscaleError):
    """Even the smallest network (or the given model) exceeds the target's budgets."""

    exit_code = 3


class NothingFitsError(DoesNotFitError):
    """Not even the smallest network of the requested base fits; `report` says what it needs."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


class OutputExistsError(TinyscaleError):
    """An output path that exists and would be overwritten without --force."""

    exit_code = 4


class ConversionError(TinyscaleError):
    """TensorFlow could not build or convert a model to a full-integer flatbuffer."""


class ModelError(TinyscaleError):
    """A .tflite file that is unreadable, not int8, or uses operators TFLM lacks."""


class MeasurementError(TinyscaleError):
    """The TFLM interpreter failed (aborted, crashed) while measuring or running a model."""


class DataError(TinyscaleError):
    """A dataset that is empty, unreadable, mislabelled or of the wrong shape."""


class TemplateError(TinyscaleError):
    """A firmware template that is missing or fails to render."""


class NotModelledError(TinyscaleError):
    """An analytic model (flatbuffer size, TFLM arena) does not cover this operator or layout.

    Raised instead of a guess: callers fall back to measuring, or report the figure as unknown.
    """
