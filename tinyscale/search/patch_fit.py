"""`fit --patch auto`: each probed network's best patch schedule, estimated, then measured.

Estimated (pure, no TFLM): the patch pass runs on the spec-built graph
(:func:`tinyscale.graph.estimate.tflite_graph`), a few schedules per
network (:func:`tinyscale.search.patching.fit_schedules`) ranked by
:func:`tinyscale.search.patching.ranking_bytes`. Flash is the writer's size of the
patched graph: the spec-built graph has the converted file's tensors, names,
quantization lengths, options and buffer sizes, so the writer gives the
patched converted model's size to the byte (tests/test_patch_fit.py checks it
against the measured file).

Measured: convert, apply that schedule to the converted flatbuffer
(:func:`tinyscale.search.patching.patch_flatbuffer`, which checks bit-equality),
and take the patched file's size and TFLM arena.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable

from tinyscale.boards.kernels import op_shapes
from tinyscale.boards.targets import Target
from tinyscale.graph.analysis import model_macs
from tinyscale.graph.estimate import tflite_graph
from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
from tinyscale.graph.model import Model
from tinyscale.network.arch import NetworkSpec
from tinyscale.progress import Progress, no_progress
from tinyscale.search.fit import Estimator, Measured, Memory, Schedule, placement_for

log = logging.getLogger(__name__)



class _Ranked:
    """One schedule of one network: its ranking arena, MACs overhead and (lazily) flatbuffer size."""

    def __init__(self, model: Model, split: str, grid: tuple[int, int], arena: int, macs_overhead: float) -> None:
        self.model = model
        self.schedule = Schedule(grid, split, macs_overhead, tuple(op_shapes(model.graph)), model)
        self.arena_bytes = arena

    @functools.cached_property
    def memory(self) -> Memory:
        return Memory(len(write_flatbuffer(self.model)), self.arena_bytes, self.schedule)


@functools.lru_cache(maxsize=256)
def ranked_schedules(spec: NetworkSpec, max_extra_macs: float) -> tuple[_Ranked, ...]:
    """The best few schedules of `spec` under the extra-MACs cap, best ranked first (memoised per spec)."""
    from tinyscale.search.patching import fit_schedules

    model = tflite_graph(spec)
    base = model_macs(model)
    options = fit_schedules(model, max_extra_macs)
    return tuple(_Ranked(o.model, o.candidate.name, o.grid, o.rank, model_macs(o.model) / base - 1) for o in options)


def patched_estimator(target: Target, unpatched: Estimator, max_extra_macs: float) -> Estimator:
    """Memory of a network with its best schedule on `target`: unpatched when that fits,
    else the best-ranked schedule that fits, else the smallest arena (what proves it does not).

    Every ranked schedule is tried, best arena first: where the best breaks flash
    a coarser grid (fewer operator tables) may fit both budgets.
    """

    def estimate(spec: NetworkSpec) -> Memory:
        plain = unpatched(spec)
        placement = placement_for(target, spec, plain)
        if placement.fits or not placement.flash_fits:  # patching only adds flash
            return plain
        best = None
        for ranked in ranked_schedules(spec, max_extra_macs):
            if ranked.arena_bytes >= plain.arena_bytes:
                break
            # The unpatched size stands in for flash first: writing the patched file to
            # size it is the slow part. It is a lower bound (the patched file adds
            # operators and tensors, shares every weight), so a schedule that breaks
            # SRAM, or flash even at that size, is dropped without writing it.
            bound = placement_for(target, spec, Memory(plain.model_bytes, ranked.arena_bytes, ranked.schedule))
            if bound.fits and placement_for(target, spec, ranked.memory).fits:
                return ranked.memory
            best = best or ranked
        return best.memory if best else plain

    return estimate


def measured_patched_memory(spec: NetworkSpec, schedule: Schedule, progress: Progress = no_progress) -> Measured:
    """Convert `spec`, apply `schedule` (outputs checked bit for bit in TFLM), measure the patched file."""
    from tinyscale.search.patching import patch_flatbuffer
    from tinyscale.training.convert import spec_to_tflite

    start = time.perf_counter()
    progress(f"converting the {spec.resolution} px network to int8")
    tflite = spec_to_tflite(spec)
    rows, cols = schedule.grid
    progress(f"patching {rows}x{cols} up to {schedule.split_tensor} and measuring the arena in TFLM")
    result = patch_flatbuffer(tflite, grid=schedule.grid, split=schedule.split_tensor)
    model = read_flatbuffer(result.data)
    measured_schedule = Schedule(result.grid, result.split_tensor, result.extra_macs,
                                 tuple(op_shapes(model.graph)), model)
    log.info("patched %dx%d: arena %d B (unpatched %d B), model %d B", rows, cols, result.after.arena_bytes,
             result.before.arena_bytes, len(result.data))
    return Measured(model_bytes=len(result.data), arena_bytes=result.after.arena_bytes, schedule=measured_schedule,
                    tflite=result.data, seconds=time.perf_counter() - start, unpatched_tflite=tflite)


PatchMeasurer = Callable[[NetworkSpec, Schedule], Measured]
