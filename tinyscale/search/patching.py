"""Choose and apply a patch schedule for any int8 model, measured in TFLM.

The pass itself (:mod:`tinyscale.graph.patch`) is pure; this module adds the
side effects: it ranks every (split tensor, grid) under the extra-MACs cap by
the analytic TFLM arena (:func:`tinyscale.graph.estimate.arena_plan`, exact to the
byte, every duplicated operator's persistent records included), measures the
winner in the TFLM interpreter to confirm it, and checks that its outputs
equal the original's bit for bit before handing it out. Should the
measurement disagree with the analytic figure, or the model hold operators
the analytic model does not cover, the best few are measured and the
measurement decides.
"""

from __future__ import annotations

import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyscale.errors import MeasurementError, NotModelledError, UsageError
from tinyscale.graph import estimate
from tinyscale.graph.analysis import model_macs
from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
from tinyscale.graph.model import Model
from tinyscale.graph.patch import (
    DEFAULT_MAX_EXTRA_MACS,
    Candidate,
    check_int8,
    find_candidate,
    patch_model,
    split_candidates,
)
from tinyscale.simulation import tflm

log = logging.getLogger(__name__)

MAX_GRID = 4  # the search tries 1x1 .. 4x4
MEASURED_FINALISTS = 4  # measured when the analytic arena cannot be trusted for the model
CHECK_INPUTS = 4
CHECK_SEED = 0
# For models the analytic arena does not cover, an order only (then measured):
# persistent bytes per operator copy (node and registration, op data, parsed
# options: estimate.py's x86-64 sizes for a convolution) and per channel.
_TAIL_BYTES_PER_OPERATOR = estimate.NODE_AND_REGISTRATION_BYTES + 80 + 28
_TAIL_BYTES_PER_CHANNEL = 8  # per-channel output multiplier and shift of conv/depthwise copies


@dataclass(frozen=True)
class Footprint:
    """What one flatbuffer costs: measured arena, its activation plan, flash, MACs."""

    arena_bytes: int
    activations_bytes: int  # the planner's head: peak live activations and scratch
    model_bytes: int
    macs: int
    operators: int

    def to_dict(self) -> dict[str, int]:
        return {"arena_bytes": self.arena_bytes, "activations_bytes": self.activations_bytes,
                "model_bytes": self.model_bytes, "macs": self.macs, "operators": self.operators}


@dataclass(frozen=True)
class MeasuredSchedule:
    split_tensor: str
    grid: tuple[int, int]
    ranking_bytes: int  # the analytic arena (or, for unmodelled models, the approximation) that ranked it
    arena_bytes: int  # measured in TFLM

    def to_dict(self) -> dict[str, Any]:
        return {"split_tensor": self.split_tensor, "grid": list(self.grid), "ranking_bytes": self.ranking_bytes,
                "arena_bytes": self.arena_bytes}


@dataclass(frozen=True)
class PatchResult:
    data: bytes  # the flatbuffer to write (the input unchanged when not patched)
    split_tensor: str | None
    split_shape: tuple[int, ...] | None
    grid: tuple[int, int]
    before: Footprint
    after: Footprint
    max_diff: int  # max |patched - original| over the check inputs
    checked_inputs: int
    measured: tuple["MeasuredSchedule", ...]  # the schedules measured in TFLM (the original not included)
    seconds: float
    note: str | None = None
    ranked: int = 0  # schedules ranked (analytically, for a model the arena model covers)

    @property
    def patched(self) -> bool:
        return self.grid != (1, 1)

    @property
    def extra_macs(self) -> float:
        return self.after.macs / self.before.macs - 1 if self.before.macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "patched": self.patched, "split_tensor": self.split_tensor,
            "split_shape": list(self.split_shape) if self.split_shape else None, "grid": list(self.grid),
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "arena_ratio": round(self.after.arena_bytes / self.before.arena_bytes, 4),
            "extra_macs": round(self.extra_macs, 4), "max_diff": self.max_diff,
            "checked_inputs": self.checked_inputs,
            "ranked_schedules": self.ranked,
            "measured_schedules": [schedule.to_dict() for schedule in self.measured],
            "seconds": round(self.seconds, 2), "note": self.note,
        }


def _head_bytes(text: str) -> int:
    for line in text.splitlines():
        if "Arena allocation head" in line:
            return int(line.split("head")[1].split()[0])
    raise MeasurementError("TFLM printed no arena head size")


def footprint(model: Model, data: bytes) -> Footprint:
    measurement = tflm.measure_arena(data)
    return Footprint(measurement.arena_bytes, _head_bytes(measurement.allocations), len(data), model_macs(model),
                     len(model.graph.operators))


# ---------------------------------------------------------------------------
# Ranking


def ranking_bytes(model: Model) -> int:
    """The minimal TFLM arena of `model`, analytic and exact (NotModelledError if it is not covered)."""
    return estimate.arena_plan(model).arena_bytes


def approximate_bytes(model: Model) -> int:
    """Planned activations plus a rough persistent tail: an order for models ranking_bytes refuses."""
    graph = model.graph
    buffers = estimate.planned_buffers(model)
    head = estimate.plan_bytes(buffers, estimate.greedy_plan(buffers))
    tail = estimate.EVAL_TENSOR_BYTES * len(graph.tensors) + _TAIL_BYTES_PER_OPERATOR * len(graph.operators)
    for op in model.graph.operators:
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            tail += _TAIL_BYTES_PER_CHANNEL * model.graph.tensors[op.outputs[0]].shape[-1]
    return head + tail


# ---------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class _Option:
    candidate: Candidate
    grid: tuple[int, int]
    model: Model
    rank: int
    extra_macs: float


def _grids(candidate: Candidate, grid: tuple[int, int] | None) -> list[tuple[int, int]]:
    if grid is not None:
        return [grid]
    rows, cols = candidate.shape[1:3]
    return [g for g in itertools.product(range(1, MAX_GRID + 1), repeat=2)
            if g != (1, 1) and g[0] <= rows and g[1] <= cols]


def analytic_ranking(model: Model) -> bool:
    """Whether the exact analytic arena covers `model` (then its patched versions too: the pass adds
    only STRIDED_SLICE, PAD(V2) and CONCATENATION, which it models)."""
    try:
        estimate.check_modelled(model)
    except NotModelledError as error:
        log.warning("ranking patch schedules approximately, measuring the best %d: %s", MEASURED_FINALISTS, error)
        return False
    return True


def _options(model: Model, candidates: list[Candidate], grid: tuple[int, int] | None,
             max_extra_macs: float | None, exact: bool) -> list[_Option]:
    """Every schedule under the cap, smallest arena first (then fewest extra MACs)."""
    base = model_macs(model)
    rank = ranking_bytes if exact else approximate_bytes
    options = []
    for candidate in candidates:
        for g in _grids(candidate, grid):
            patched = patch_model(model, candidate, g)
            extra = model_macs(patched) / base - 1 if base else 0.0
            if max_extra_macs is not None and extra > max_extra_macs:
                continue
            options.append(_Option(candidate, g, patched, rank(patched), extra))
    return sorted(options, key=lambda option: (option.rank, option.extra_macs))


# fit ranks schedules at every probe of its search, so it tries a few, not all:
# splits whose map is at least 1/8 of the input's side (the early, large maps,
# where the arena peaks) screened at one grid, then every grid on the best few.
FIT_SPLIT_MIN_FRACTION = 1 / 8
FIT_SCREEN_GRID = (2, 2)
FIT_KEPT_SPLITS = 2
# 1xN and Nx1 strips never won on the bundled boards' networks; dropping them saves a third.
FIT_GRIDS = tuple(itertools.product(range(2, MAX_GRID + 1), repeat=2))


def fit_schedules(model: Model, max_extra_macs: float) -> list[_Option]:
    """The schedules `fit` considers for one network, best ranked first (pure, no TFLM)."""
    graph = model.graph
    side = graph.tensors[graph.inputs[0]].shape[1] if graph.inputs else 0
    early = [c for c in split_candidates(model) if c.shape[1] >= side * FIT_SPLIT_MIN_FRACTION]
    exact = analytic_ranking(model)  # tinyscale's own networks are always modelled
    screened = _options(model, early, FIT_SCREEN_GRID, max_extra_macs, exact)
    kept = list(dict.fromkeys(option.candidate for option in screened))[:FIT_KEPT_SPLITS]
    options = [option for candidate in kept for grid in FIT_GRIDS if grid[0] <= candidate.shape[1]
               and grid[1] <= candidate.shape[2] for option in _options(model, [candidate], grid, max_extra_macs, exact)]
    return sorted(options, key=lambda option: option.rank)


def max_output_diff(original: bytes, patched: bytes, count: int = CHECK_INPUTS, seed: int = CHECK_SEED) -> int:
    """Max |difference| of output 0 over `count` random int8 inputs, in TFLM."""
    graph = read_flatbuffer(original).graph
    shape = graph.tensors[graph.inputs[0]].shape[1:]
    inputs = np.random.default_rng(seed).integers(-128, 128, (count, *shape), dtype=np.int8)
    # Two worker processes side by side: starting one costs more than the runs.
    with ThreadPoolExecutor(2) as pool:
        expected, actual = pool.map(lambda model: tflm.run_model(model, inputs).astype(np.int64), (original, patched))
    return int(np.abs(actual - expected).max())


def _unchanged(data: bytes, before: Footprint, note: str, started: float,
               measured: tuple[MeasuredSchedule, ...] = (), ranked: int = 0) -> PatchResult:
    log.warning("%s", note)
    return PatchResult(data, None, None, (1, 1), before, before, 0, 0, measured, time.perf_counter() - started,
                       note, ranked)


def _parse_split(model: Model, split: str | None) -> list[Candidate]:
    candidates = split_candidates(model)
    return candidates if split is None else [find_candidate(model, split)]


@dataclass(frozen=True)
class _Measured:
    footprint: Footprint
    option: _Option
    data: bytes

    @property
    def schedule(self) -> MeasuredSchedule:
        return MeasuredSchedule(self.option.candidate.name, self.option.grid, self.option.rank,
                                self.footprint.arena_bytes)


def _measure(option: _Option) -> _Measured:
    written = write_flatbuffer(option.model)
    measured = _Measured(footprint(option.model, written), option, written)
    log.info("patch %s %dx%d: arena %d B measured (ranked %d B)", option.candidate.name, *option.grid,
             measured.footprint.arena_bytes, option.rank)
    return measured


def _measure_best(options: list[_Option], exact: bool, finalists: int) -> list[_Measured]:
    """The winner measured; the best `finalists` too when the ranking is approximate or the
    winner's measurement disagrees with its analytic arena (the measurement then decides)."""
    measured = [_measure(options[0])]
    if exact and measured[0].footprint.arena_bytes == options[0].rank:
        return measured
    if exact:
        log.warning("the analytic arena of %s %dx%d (%d B) differs from TFLM's measured %d B; measuring the best %d",
                    options[0].candidate.name, *options[0].grid, options[0].rank,
                    measured[0].footprint.arena_bytes, finalists)
    return measured + [_measure(option) for option in options[1:finalists]]


def patch_flatbuffer(data: bytes, *, grid: tuple[int, int] | None = None, split: str | None = None,
                     max_extra_macs: float = DEFAULT_MAX_EXTRA_MACS,
                     finalists: int = MEASURED_FINALISTS) -> PatchResult:
    """The patched flatbuffer with the smallest arena, confirmed in TFLM, outputs checked bit for bit.

    With both `grid` and `split` the schedule is the caller's (the MACs cap is
    not applied); otherwise the missing parts are searched under the cap,
    ranked by the exact analytic arena, and only the winner is measured
    (`finalists` are measured when the analytic figure is unavailable or
    wrong). A model with nothing worth patching comes back unchanged, with a note.
    """
    started = time.perf_counter()
    model = read_flatbuffer(data)
    check_int8(model)
    if grid is not None and split is not None:
        return _apply_fixed(data, model, find_candidate(model, split), grid, started)
    before = footprint(model, data)
    candidates = _parse_split(model, split)
    if not candidates:
        return _unchanged(data, before, "nothing to patch: no spatial operator chain from the input to cut", started)
    cap = None if grid is not None and split is not None else max_extra_macs
    exact = analytic_ranking(model)
    options = _options(model, candidates, grid, cap, exact)
    if not options:
        return _unchanged(data, before, f"nothing to patch within the extra-MACs cap of {max_extra_macs:.0%}",
                          started)
    if cap is not None and exact and options[0].rank >= before.arena_bytes:
        return _unchanged(data, before, f"nothing worth patching: the best of {len(options)} schedules needs "
                          f"{options[0].rank:,} B of arena (analytic), the model {before.arena_bytes:,} B",
                          started, ranked=len(options))
    measured = _measure_best(options, exact, finalists)
    best = min(measured, key=lambda m: m.footprint.arena_bytes)
    schedules = tuple(m.schedule for m in measured)
    after, option = best.footprint, best.option
    if cap is not None and after.arena_bytes >= before.arena_bytes:
        return _unchanged(data, before, f"nothing worth patching: the best schedule needs {after.arena_bytes:,} B "
                          f"of arena, the model {before.arena_bytes:,} B", started, schedules, len(options))
    diff = max_output_diff(data, best.data)
    if diff:
        raise MeasurementError(f"the patched model's outputs differ from the original's (max diff {diff}); not written")
    return PatchResult(best.data, option.candidate.name, option.candidate.shape, option.grid, before, after, diff,
                       CHECK_INPUTS, schedules, time.perf_counter() - started, ranked=len(options))


def _apply_fixed(data: bytes, model: Model, candidate: Candidate, grid: tuple[int, int], started: float) -> PatchResult:
    """The caller's schedule: nothing to choose, so the original, the patched model and
    the bit-equality check are measured side by side (each a worker process to start)."""
    patched = patch_model(model, candidate, grid)
    written = write_flatbuffer(patched)
    with ThreadPoolExecutor(3) as pool:
        before_job = pool.submit(footprint, model, data)
        after_job = pool.submit(footprint, patched, written)
        diff_job = pool.submit(max_output_diff, data, written)
        before, after, diff = before_job.result(), after_job.result(), diff_job.result()
    if diff:
        raise MeasurementError(f"the patched model's outputs differ from the original's (max diff {diff}); not written")
    log.info("patch %s %dx%d: arena %d B", candidate.name, *grid, after.arena_bytes)
    schedule = MeasuredSchedule(candidate.name, grid, ranking_bytes(patched), after.arena_bytes)
    return PatchResult(written, candidate.name, candidate.shape, grid, before, after, diff, CHECK_INPUTS, (schedule,),
                       time.perf_counter() - started)


def parse_grid(text: str) -> tuple[int, int]:
    """"RxC" -> (R, C); UsageError otherwise."""
    rows, separator, cols = text.lower().partition("x")
    if separator and rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0:
        return int(rows), int(cols)
    raise UsageError(f"--grid wants ROWSxCOLS with positive integers, e.g. 2x2 (got {text!r})")
