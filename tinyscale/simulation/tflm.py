"""Measure and run quantized models with the TFLite Micro interpreter, crash-safely.

The TFLM Python interpreter can abort() or segfault the whole process (a
too-small arena, an unsupported model). All TFLM work therefore happens in a
worker subprocess (:mod:`tinyscale.simulation._tflm_worker`, no TensorFlow) that forks one
child per interpreter. This module talks to it over pipes with enforced
timeouts and turns every failure into a one-line :class:`MeasurementError` or
:class:`ModelError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import tinyscale
from tinyscale.errors import DataError, MeasurementError, ModelError, one_line
from tinyscale.simulation._tflm_worker import EXCEPTION_MARKER

log = logging.getLogger(__name__)

# The RecordingMicroAllocator total is usually the minimal arena, but not
# always: some TFLM versions have needed up to a few KB more for small models
# and ~15 B less for large ones. The search starts at the total and widens by
# this factor on the side that needs it; the first step above the total:
BRACKET_GROWTH = 16
BRACKET_FIRST_STEP_ABOVE = 64
# Arenas for the first, size-finding allocation: usually enough, then surely enough.
FIRST_ARENA_BYTES = 1 << 20
LARGE_ARENA_BYTES = 1 << 30
MAX_ARENA_BYTES = 1 << 31
PROBE_TIMEOUT_SECONDS = 30.0
# TensorType values of the TFLite schema -> the inputs a runner accepts
# (tinyscale.graph.tflite_model.IO_TYPES; check_full_integer refuses other models).
_INPUT_TYPES = {0: np.float32, 7: np.int16, 9: np.int8}


@dataclass(frozen=True)
class ArenaMeasurement:
    """The minimal TFLM tensor arena of a model, and how it was found."""

    arena_bytes: int  # minimal arena with which the interpreter allocates and invokes
    reported_bytes: int  # RecordingMicroAllocator's total at that arena
    allocations: str  # raw print_allocations() text
    probes: int  # interpreter constructions it took
    seconds: float  # wall time of the measurement (worker start excluded)


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    status: str  # "exit 0", "exit 1", "signal 6", "timeout"
    text: str


def _tflm_reason(text: str) -> str:
    """TFLM's own messages in one line, else the Python exception the child reported."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line for line in lines if not line.startswith(EXCEPTION_MARKER)]
    if own:
        return one_line("; ".join(dict.fromkeys(own)))
    exceptions = [line.removeprefix(EXCEPTION_MARKER) for line in lines]
    return one_line(exceptions[-1]) if exceptions else "no message"


class _Worker:
    """One `python -m tinyscale.simulation._tflm_worker` process holding one loaded model.

    The worker runs in its own process group, so that a timeout kills it
    together with the interpreter child it may have forked.
    """

    def __init__(self, model: bytes, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.runs = 0  # interpreters constructed so far
        self._buffer = b""
        self._directory = tempfile.TemporaryDirectory(prefix="tinyscale-tflm-")
        self.directory = Path(self._directory.name)
        self._stderr = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tinyscale.simulation._tflm_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=_worker_environment(),
                start_new_session=True,
            )
        except OSError as error:
            self._cleanup_files()
            raise MeasurementError(f"cannot start the TFLM worker: {error}") from None
        try:
            self._load(model)
        except BaseException:
            self.close()
            raise

    def _load(self, model: bytes) -> None:
        model_path = self.directory / "model.tflite"
        model_path.write_bytes(model)
        answer = self.request({"op": "load", "path": str(model_path)})
        if not answer.get("ok"):
            raise _unreadable(model, answer.get("error", ""))
        self.input_shape = tuple(answer["input_shape"])  # of input 0, batch axis included
        self.input_dtype = _INPUT_TYPES.get(answer["input_type"])  # None: a type tinyscale does not feed

    def __enter__(self) -> "_Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kill(self) -> None:
        """Kill the worker and any interpreter child: the group we created for it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        self.process.stdout.close()
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        self._stderr.close()
        self._directory.cleanup()

    def _worker_died(self) -> MeasurementError:
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self._kill()
            code = self.process.returncode
        self._stderr.seek(0)
        reason = _tflm_reason(self._stderr.read().decode("utf-8", errors="replace"))
        return MeasurementError(f"the TFLM worker process died (exit {code}): {reason}")

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; wait for its answer until the overall deadline."""
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            raise self._worker_died() from None
        while b"\n" not in self._buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not _readable(self.process.stdout, remaining):
                self._kill()
                raise MeasurementError("TFLM did not finish within the time limit (killed)")
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise self._worker_died()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def run(self, arena: int, *, invoke: bool = False, capture: bool = False, allocations: bool = False,
            inputs: Path | None = None, outputs: Path | None = None,
            timeout: float = PROBE_TIMEOUT_SECONDS) -> _Outcome:
        """One interpreter in a forked child, killed after `timeout` seconds."""
        remaining = max(0.1, self.deadline - time.monotonic())
        self.runs += 1
        answer = self.request({
            "op": "run", "arena": int(arena), "invoke": invoke, "capture": capture,
            "allocations": allocations, "timeout": min(timeout, remaining),
            "inputs": str(inputs) if inputs else None, "outputs": str(outputs) if outputs else None,
        })
        if "status" not in answer:
            raise MeasurementError(f"TFLM worker error: {one_line(answer.get('error', ''))}")
        return _Outcome(bool(answer["ok"]), answer["status"], answer.get("text", ""))

    def allocates(self, arena: int, invoke: bool = False) -> bool:
        """Whether the interpreter can be constructed (tensors allocated) with `arena` bytes."""
        outcome = self.run(arena, invoke=invoke)
        if outcome.status == "timeout":  # neither a yes nor a no: do not let it steer a search
            raise MeasurementError(f"a TFLM probe at {arena} bytes did not finish within {PROBE_TIMEOUT_SECONDS:g} s")
        return outcome.ok


def _readable(stream: Any, timeout: float) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def _unreadable(model: bytes, worker_error: str) -> ModelError:
    """The clearest reason a model cannot be read: our flatbuffer reader's, else TFLM's."""
    from tinyscale.graph.tflite_model import read_model  # noqa: PLC0415 - only on this error path

    try:
        read_model(model)
    except ModelError as error:
        return error
    return ModelError(f"TFLM cannot read the model: {one_line(worker_error)}")


def _worker_environment() -> dict[str, str]:
    """The caller's environment, with tinyscale importable from the worker."""
    environment = dict(os.environ)
    package_root = str(Path(tinyscale.__file__).resolve().parent.parent)  # the folder holding tinyscale/
    paths = [package_root, *filter(None, environment.get("PYTHONPATH", "").split(os.pathsep))]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


# ---------------------------------------------------------------------------
# Arena measurement


def _reported_total(text: str) -> int | None:
    for line in text.splitlines():
        if "Arena allocation total" in line:
            return int(line.split("total")[1].split()[0])
    return None


@dataclass(frozen=True)
class _FirstAllocation:
    arena: int  # an arena that works
    reported: int  # RecordingMicroAllocator's total with that arena


def _first_allocation(worker: _Worker) -> _FirstAllocation:
    """Allocate with an arena that is surely large enough; ModelError if none is.

    TFLM's out-of-arena failures take many forms ("Failed to resize buffer",
    "Too many buffers", even a segfault), so they are not parsed: when the
    usual arena fails, a huge one is tried (its untouched pages are never
    mapped: measured as fast as 1 MB). If that fails
    too, the model is at fault and TFLM's own reason is reported.
    """
    for arena in (FIRST_ARENA_BYTES, LARGE_ARENA_BYTES):
        outcome = worker.run(arena, capture=True, allocations=True)
        if outcome.ok:
            break
        if outcome.status == "timeout":
            raise MeasurementError(f"TFLM did not load the model within {PROBE_TIMEOUT_SECONDS:g} s")
    else:
        raise ModelError(f"TFLM cannot load the model: {_tflm_reason(outcome.text)}")
    total = _reported_total(outcome.text)
    if total is None:
        raise MeasurementError(f"TFLM printed no allocation total: {_tflm_reason(outcome.text)}")
    return _FirstAllocation(arena, total)


def _bracket(worker: _Worker, reported: int) -> tuple[int, int]:
    """(lo, hi) with lo failing and hi allocating, starting from the allocator's total.

    Usually the total is exact, and two probes (total, total - 1) settle it. When
    it is not, the bracket widens geometrically on the side that needs it.
    """
    if worker.allocates(reported):
        hi, step = reported, 1
        while True:
            lo = max(0, reported - step)
            if lo == 0 or not worker.allocates(lo):
                return lo, hi
            hi, step = lo, step * BRACKET_GROWTH
    lo, step = reported, BRACKET_FIRST_STEP_ABOVE
    while True:
        hi = reported + step
        if worker.allocates(hi):
            return lo, hi
        if hi >= MAX_ARENA_BYTES:
            raise MeasurementError(f"no arena up to {MAX_ARENA_BYTES} bytes allocates the model")
        lo, step = hi, step * BRACKET_GROWTH


def _bisect(worker: _Worker, lo: int, hi: int, invoke: bool = False) -> int:
    """Smallest arena in (lo, hi] that works, given lo fails and hi succeeds."""
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if worker.allocates(middle, invoke):
            hi = middle
        else:
            lo = middle
    return hi


def _bisect_invoking(worker: _Worker, allocating: int, failed: _Outcome) -> tuple[int, _Outcome]:
    """Fallback when the minimal allocating arena does not invoke: search with invokes."""
    hi = allocating * 2
    if not worker.allocates(hi, invoke=True):
        raise MeasurementError(f"TFLM cannot invoke the model ({failed.status}): {_tflm_reason(failed.text)}")
    arena = _bisect(worker, allocating, hi, invoke=True)
    return arena, worker.run(arena, invoke=True, capture=True, allocations=True)


def measure_arena(model: bytes, *, timeout: float = 120.0, verify_invoke: bool = True) -> ArenaMeasurement:
    """The minimal tensor arena, to the byte, with which TFLM allocates and invokes `model`.

    TFLM does all its arena allocation while constructing the interpreter
    (AllocateTensors, including the kernels' scratch buffers), so the bisection
    probes construct only (about a millisecond each); the result is then
    confirmed by a full invoke at the minimal arena. Should that invoke fail
    while a larger arena works, the search repeats with invoking probes.
    That invoke dominates the time for large models (~120 ms for
    EfficientNet-lite0 at 128 px, against ~5 ms per probe); `verify_invoke=False`
    skips it.
    """
    launched = time.perf_counter()
    with _Worker(model, timeout) as worker:
        started = time.perf_counter()
        reported = _first_allocation(worker).reported
        lo, hi = _bracket(worker, reported)
        arena = _bisect(worker, lo, hi)
        final = worker.run(arena, invoke=verify_invoke, capture=True, allocations=True)
        if not final.ok:
            arena, final = _bisect_invoking(worker, arena, final)
        probes = worker.runs
        seconds = time.perf_counter() - started
    total = _reported_total(final.text)
    measurement = ArenaMeasurement(
        arena_bytes=arena,
        reported_bytes=total if total is not None else reported,
        allocations=final.text.strip(),
        probes=probes,
        seconds=seconds,
    )
    log.info("TFLM arena: minimal %d bytes (allocator reports %d), %d probes, %.0f ms (+%.0f ms worker start)",
             measurement.arena_bytes, measurement.reported_bytes, measurement.probes, seconds * 1000,
             (started - launched) * 1000)
    return measurement


def probe(model: bytes, arena_bytes: int, *, invoke: bool = True, timeout: float = 60.0) -> bool:
    """Whether TFLM constructs (and, with `invoke`, runs) `model` with `arena_bytes` (isolated)."""
    with _Worker(model, timeout) as worker:
        return worker.allocates(arena_bytes, invoke)


# ---------------------------------------------------------------------------
# Running and loading


class ModelRunner:
    """One TFLM worker holding `model`, reused for many batches.

    Starting a worker (a Python process importing tflite_micro) costs more than
    running a small model on a chunk of images; evaluation keeps one per thread.
    Each batch still runs in a forked, time-limited child, so a crash costs one
    batch, not the worker. Without `arena_bytes`, any arena large enough is used.
    """

    def __init__(self, model: bytes, *, arena_bytes: int | None = None, timeout: float = 300.0) -> None:
        self.timeout = timeout
        self.arena_bytes = arena_bytes
        self._worker = _Worker(model, timeout)

    def __enter__(self) -> "ModelRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self._worker.close()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Output 0 for each input of the batch `inputs` (N, *input_shape, the input's type), stacked."""
        inputs = np.asarray(inputs)
        worker = self._worker
        worker.deadline = time.monotonic() + self.timeout  # the limit is per batch, not per runner
        _check_inputs(worker, inputs)
        if self.arena_bytes is None:
            self.arena_bytes = _first_allocation(worker).arena
        inputs_path = worker.directory / "inputs.npy"
        outputs_path = worker.directory / "outputs.npy"
        np.save(inputs_path, inputs)
        outcome = worker.run(self.arena_bytes, invoke=True, capture=True, inputs=inputs_path,
                             outputs=outputs_path, timeout=self.timeout)
        if not outcome.ok:
            raise MeasurementError(f"TFLM failed to run the model ({outcome.status}): {_tflm_reason(outcome.text)}")
        return np.load(outputs_path)


def run_model(model: bytes, inputs: np.ndarray, *, arena_bytes: int | None = None,
              timeout: float = 300.0) -> np.ndarray:
    """Output 0 of `model` for each input of the batch `inputs` (N, *input_shape, its type), stacked.

    Without `arena_bytes`, any arena large enough is used.
    """
    with ModelRunner(model, arena_bytes=arena_bytes, timeout=timeout) as runner:
        return runner.run(inputs)


def _check_inputs(worker: _Worker, inputs: np.ndarray) -> None:
    """DataError unless `inputs` is a batch of samples of the model's input type and shape."""
    if worker.input_dtype is None:
        raise ModelError("the model's input is not int8, int16 or float32 (convert it with full-integer quantization)")
    expected = worker.input_shape[1:]
    if inputs.dtype != worker.input_dtype:
        raise DataError(f"TFLM inputs must be {np.dtype(worker.input_dtype).name}, got {inputs.dtype}")
    if inputs.ndim != len(expected) + 1 or tuple(inputs.shape[1:]) != expected:
        shape = "(N, " + ", ".join(map(str, expected)) + ")"
        raise DataError(f"TFLM inputs must have shape {shape}, got {tuple(inputs.shape)}")
    if len(inputs) == 0:
        raise DataError("no inputs to run")


def check_loads(model: bytes, *, timeout: float = 120.0) -> None:
    """Raise ModelError, with TFLM's own reason, when TFLM cannot load `model`."""
    with _Worker(model, timeout) as worker:
        _first_allocation(worker)
