"""The fitter: the largest phi whose int8 TFLM model fits a target.

Memory grows monotonically with phi and the network is piecewise constant in
phi (rounding), so the search bisects on the analytic estimate, then pins the
exact phi interval that yields the answer's network and the first phi above it
that yields a bigger one. The answer is then verified by a real conversion and
TFLM measurement; if the measurement disagrees with the estimate the search
steps down one network at a time.

With ``patch="auto"`` a network that does not fit unpatched may run its first
stages in patches (:mod:`tinyscale.search.patch_fit` picks the schedule); the search
then starts at the unpatched answer and verifies the patched conversion.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from tinyscale.boards.budget import (
    DeviceArena,
    Placement,
    device_arena,
    place_by_rule,
    selftest_flash_bytes,
)
from tinyscale.boards.kernels import OpShapes, op_shapes
from tinyscale.boards.targets import Target
from tinyscale.errors import NothingFitsError, UsageError
from tinyscale.graph.latency import (
    LatencyEstimate,
    cost_table,
    no_model_reason,
    predict,
)
from tinyscale.graph.model import Model
from tinyscale.graph.patch import DEFAULT_MAX_EXTRA_MACS
from tinyscale.network import arch
from tinyscale.network.arch import NetworkSpec, ScaledNetwork
from tinyscale.network.scaling import Coefficients, format_phi
from tinyscale.progress import Progress, no_progress

if TYPE_CHECKING:
    from tinyscale.graph.model import Model

log = logging.getLogger(__name__)

PHI_MIN = -20.0  # at or beyond the point where every dimension has hit its floor
PHI_MAX = 10.0  # ~B7 and beyond: larger than any microcontroller
# Bisection stops when the bracket is this narrow; breakpoints of the rounding
# are then located to BOUNDARY_TOL, well inside the reported 1e-4 precision.
SEARCH_TOL = 1e-4
BOUNDARY_TOL = 1e-7


@dataclass(frozen=True)
class Schedule:
    """How a network runs: unpatched (grid 1x1), or its first stages in a grid of patches."""

    grid: tuple[int, int] = (1, 1)
    split_tensor: str | None = None
    macs_overhead: float = 0.0  # extra MACs of the halos, as a fraction of the unpatched MACs
    # The patched graph's (operator, input, weights) shapes: the kernel scratch margin
    # follows the patched operators (smaller tiles), as firmware computes it from the file.
    operator_shapes: tuple[OpShapes, ...] | None = field(default=None, repr=False, compare=False)
    # The patched graph itself: the 32-bit arena replay and the latency (halos' extra MACs,
    # the patch operators) read it; firmware replays the file's.
    model: "Model | None" = field(default=None, repr=False, compare=False)

    @property
    def patched(self) -> bool:
        return self.grid != (1, 1)

    def to_dict(self) -> dict:
        return {"patch_grid": list(self.grid), "patch_split_tensor": self.split_tensor,
                "macs_overhead": round(self.macs_overhead, 6)}


UNPATCHED = Schedule()


@dataclass(frozen=True)
class Memory:
    """Flatbuffer and minimal arena size of one network, estimated or measured."""

    model_bytes: int
    arena_bytes: int
    schedule: Schedule = UNPATCHED


@dataclass(frozen=True)
class Measured(Memory):
    tflite: bytes = field(repr=False, default=b"")
    seconds: float = 0.0
    unpatched_tflite: bytes = field(repr=False, default=b"")  # the converter's file, when `tflite` is patched


Estimator = Callable[[NetworkSpec], Memory]
Measurer = Callable[[NetworkSpec], Measured]


def analytic_memory(spec: NetworkSpec) -> Memory:
    from tinyscale.graph.estimate import estimate_memory

    estimate = estimate_memory(spec)
    return Memory(model_bytes=estimate.model_bytes, arena_bytes=estimate.arena_bytes)


def measured_memory(spec: NetworkSpec, progress: Progress = no_progress) -> Measured:
    """Build, convert to int8 and measure in TFLM (seconds; TensorFlow imported here)."""
    from tinyscale.simulation.tflm import measure_arena
    from tinyscale.training.convert import spec_to_tflite

    start = time.perf_counter()
    progress(f"converting the {spec.resolution} px network to int8")
    tflite = spec_to_tflite(spec)
    progress("measuring the minimal arena in TFLM")
    arena = measure_arena(tflite)
    return Measured(
        model_bytes=len(tflite),
        arena_bytes=arena.arena_bytes,
        tflite=tflite,
        seconds=time.perf_counter() - start,
    )


@functools.lru_cache(maxsize=256)
def _operator_shapes(spec: NetworkSpec) -> tuple[OpShapes, ...]:
    from tinyscale.graph.estimate import tflite_graph

    return tuple(op_shapes(tflite_graph(spec).graph))


@functools.lru_cache(maxsize=1024)
def _device_arena(spec: NetworkSpec, target: Target) -> DeviceArena | None:
    from tinyscale.graph.estimate import tflite_graph

    return device_arena(tflite_graph(spec), target)


def placement_for(target: Target, spec: NetworkSpec, memory: Memory) -> Placement:
    """Where `spec`'s model goes on `target`: budget.place_model's rule, memoised per spec.

    The 32-bit arena replay of the converter's graph (or of the patched one)
    when it covers the target's build, else the host arena plus the kernel
    library's margin; firmware applies the same rule to the file.
    """
    schedule = memory.schedule
    patched = schedule.patched and schedule.model is not None
    shapes = (schedule.operator_shapes if schedule.patched else None) or _operator_shapes(spec)
    selftest = selftest_flash_bytes(spec.input_shape, spec.classes)
    if schedule.patched and not patched:
        device = None  # a schedule without its graph: the host rule
    else:
        device = device_arena(schedule.model, target) if patched else _device_arena(spec, target)
    # No CMSIS-NN LSTM sums: tinyscale's networks have no LSTM.
    return place_by_rule(target, memory.model_bytes, memory.arena_bytes, tuple(shapes), device, selftest)


def latency_for(target: Target, spec: NetworkSpec, memory: Memory) -> LatencyEstimate | None:
    """Predicted latency of `spec` on `target` as it runs (patched graph when patched); None: no cost table."""
    table = cost_table(target.cpu, target.kernel_library)
    if table is None:
        return None
    from tinyscale.graph.estimate import tflite_graph

    patched = memory.schedule.model if memory.schedule.patched else None
    return predict(patched or tflite_graph(spec), table, target.clock_hz)


@dataclass(frozen=True)
class FitRequest:
    target: Target
    base: str = "efficientnet-lite0"
    classes: int = 10
    channels: int = 3
    coefficients: Coefficients = field(default_factory=Coefficients)
    max_latency_ms: float | None = None  # a third budget beside flash and SRAM (None: latency is only reported)

    def network(self, phi: float) -> ScaledNetwork:
        return arch.scale(self.base, phi, self.coefficients, classes=self.classes, channels=self.channels)

    def spec(self, phi: float) -> NetworkSpec:
        return self.network(phi).spec


@dataclass(frozen=True)
class FitResult:
    request: FitRequest
    phi: float  # the largest phi with the fewest decimals (2 to 6) giving the answer's network
    phi_low: float  # the answer's network is produced for phi in [phi_low, phi_high) (1e-6 grid)
    phi_high: float
    next_phi: float | None  # smallest phi (1e-4 grid) giving the next, larger network (None at PHI_MAX)
    network: ScaledNetwork
    estimate: Memory
    placement: Placement  # from the measurement when verified, else from the estimate
    next_placement: Placement | None  # the next network's (estimated) need
    measured: Measured | None
    next_measured: Measured | None = None
    capped: bool = False  # the search ceiling PHI_MAX itself fits
    search_seconds: float = 0.0
    probes: int = 0
    phi_unpatched: float | None = None  # the answer with --patch off (None: nothing fits unpatched)
    latency: LatencyEstimate | None = None  # the answer's predicted latency (None: no cost table for the core)
    next_latency: LatencyEstimate | None = None

    @property
    def schedule(self) -> Schedule:
        """The answer's schedule (measured when verified)."""
        return (self.measured or self.estimate).schedule

    @property
    def verified(self) -> bool:
        return self.measured is not None

    @property
    def binding(self) -> str:
        """Which budget stops phi from growing: the one(s) the next network exceeds."""
        if self.capped or self.next_placement is None:
            return "none"
        failing = self.next_placement.failing + latency_failing(self.request, self.next_latency)
        return "+".join(failing) if failing else "none"

    def to_dict(self) -> dict:
        spec = self.network.spec
        placement = self.placement
        return {
            "target": self.request.target.name,
            "base": self.request.base,
            "classes": self.request.classes,
            "channels": self.request.channels,
            "alpha": self.request.coefficients.alpha,
            "beta": self.request.coefficients.beta,
            "gamma": self.request.coefficients.gamma,
            "phi": self.phi,
            "phi_interval": [self.phi_low, self.phi_high],
            "next_phi": self.next_phi,
            "depth_multiplier": self.network.depth_multiplier,
            "width_multiplier": self.network.width_multiplier,
            "resolution_multiplier": self.network.resolution_multiplier,
            "resolution": spec.resolution,
            "blocks": len(spec.blocks),
            "params": arch.count_params(spec),
            "macs": arch.count_macs(spec),
            **placement.to_dict(),
            "estimated_model_bytes": self.estimate.model_bytes,
            "estimated_arena_bytes": self.estimate.arena_bytes,
            "flash_utilisation": placement.flash_needed_bytes / placement.flash_budget_bytes,
            "sram_utilisation": placement.sram_needed_bytes / placement.sram_budget_bytes,
            "binding": self.binding,
            "verified": self.verified,
            "next_verified": self.next_measured is not None,
            "capped": self.capped,
            "search_seconds": round(self.search_seconds, 4),
            "verify_seconds": round(self.measured.seconds, 3) if self.measured else None,
            "probes": self.probes,
            **self.schedule.to_dict(),
            "phi_unpatched": self.phi_unpatched,
            **latency_dict(self.request, self.latency),
            "next": self.next_dict(),
        }

    def next_dict(self) -> dict | None:
        """The next network's memory and need against the budgets: the proof that it does not fit.

        Measured in TFLM with --prove, else estimated (`measured` says which).
        """
        if self.next_phi is None or self.next_placement is None:
            return None
        spec = self.request.spec(self.next_phi)
        return {
            "phi": self.next_phi,
            "resolution": spec.resolution,
            "blocks": len(spec.blocks),
            "measured": self.next_measured is not None,
            **self.next_placement.to_dict(),
            "latency_ms": None if self.next_latency is None else round(self.next_latency.latency_ms, 4),
            "binding": self.binding,
        }


def latency_failing(request: FitRequest, latency: LatencyEstimate | None) -> tuple[str, ...]:
    """("latency",) when a latency budget is set and `latency` exceeds it, else ()."""
    budget = request.max_latency_ms
    return ("latency",) if budget is not None and latency is not None and latency.latency_ms > budget else ()


def latency_dict(request: FitRequest, latency: LatencyEstimate | None) -> dict:
    """The JSON keys fit reports about latency (always present; null without a cost table)."""
    target = request.target
    return {
        "latency_ms": None if latency is None else round(latency.latency_ms, 4),
        "max_latency_ms": request.max_latency_ms,
        "latency_fits": not latency_failing(request, latency),
        "latency_clock_hz": target.clock_hz,
        "latency_cost_table": None if latency is None else f"{latency.table.cpu}-{latency.table.kernel_library}",
        "latency_estimate": None if latency is None else latency.table.estimate,
        "latency_unmodelled_ops": [] if latency is None else list(latency.unmodelled),
        "latency_note": no_model_reason(target.cpu, target.kernel_library) if latency is None else None,
    }


def bisect(lo: float, hi: float, at_or_below_answer: Callable[[float], bool], tolerance: float) -> tuple[float, float]:
    """Narrow (lo, hi) to `tolerance` around the phi where `at_or_below_answer` turns false.

    The one bisection of the search: the largest fitting phi (the predicate is
    "fits") and the first phi of a new network on either side (the predicate is
    "gives the same network", or its negation going down).
    """
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if at_or_below_answer(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


class _Search:
    """Memoised evaluation of phi -> network -> memory -> placement."""

    def __init__(self, request: FitRequest, estimator: Estimator) -> None:
        self.request = request
        self.estimator = estimator
        self._estimates: dict[NetworkSpec, Memory] = {}
        # Measurements replace estimates once taken: the truth wins.
        self._measured: dict[NetworkSpec, Memory] = {}
        self._latencies: dict[tuple[NetworkSpec, Schedule], LatencyEstimate | None] = {}

    @property
    def probes(self) -> int:
        return len(self._estimates)

    def estimate(self, spec: NetworkSpec) -> Memory:
        if spec not in self._estimates:
            self._estimates[spec] = self.estimator(spec)
        return self._estimates[spec]

    def record_measurement(self, spec: NetworkSpec, memory: Memory) -> None:
        self._measured[spec] = memory

    def memory(self, spec: NetworkSpec) -> Memory:
        return self._measured.get(spec) or self.estimate(spec)

    def placement(self, spec: NetworkSpec, memory: Memory | None = None) -> Placement:
        return placement_for(self.request.target, spec, memory or self.memory(spec))

    def latency(self, spec: NetworkSpec, memory: Memory | None = None) -> LatencyEstimate | None:
        memory = memory or self.memory(spec)
        key = (spec, memory.schedule)
        if key not in self._latencies:
            self._latencies[key] = latency_for(self.request.target, spec, memory)
        return self._latencies[key]

    def accepts(self, spec: NetworkSpec, memory: Memory | None = None) -> bool:
        """Fits flash and SRAM, and the latency budget when one is set."""
        memory = memory or self.memory(spec)
        if not self.placement(spec, memory).fits:
            return False
        return self.request.max_latency_ms is None or not latency_failing(self.request, self.latency(spec, memory))

    def fits(self, phi: float) -> bool:
        return self.accepts(self.request.spec(phi))

    def bracket(self, lo: float = PHI_MIN, step: float = 1.0) -> tuple[float, float] | None:
        """(lo, hi) with fits(lo) and not fits(hi), growing from `lo` (which fits) in doubling steps.

        Growing from the small end keeps every probe near the answer's size: a
        measured probe of a phi=10 network would need tens of GB to convert.
        None when PHI_MAX itself fits.
        """
        while lo < PHI_MAX:
            hi = min(PHI_MAX, lo + step)
            if not self.fits(hi):
                return lo, hi
            lo, step = hi, step * 2
        return None

    def largest_fitting(self, lo: float, hi: float) -> float:
        """Bisect a bracket with fits(lo) and not fits(hi)."""
        return bisect(lo, hi, self.fits, SEARCH_TOL)[0]

    def boundary_above(self, phi: float, limit: float) -> float | None:
        """Smallest phi' in (phi, limit] whose network differs from phi's (to BOUNDARY_TOL)."""
        spec = self.request.spec(phi)
        if self.request.spec(limit) == spec:
            return None
        return bisect(phi, limit, lambda mid: self.request.spec(mid) == spec, BOUNDARY_TOL)[1]

    def boundary_below(self, phi: float) -> float:
        """Smallest phi' <= phi with the same network as phi (PHI_MIN if it never changes)."""
        spec = self.request.spec(phi)
        step = 0.25
        lo = phi
        while lo > PHI_MIN:
            candidate = max(PHI_MIN, lo - step)
            if self.request.spec(candidate) != spec:
                break
            lo = candidate
        else:
            return PHI_MIN
        return bisect(candidate, lo, lambda mid: self.request.spec(mid) != spec, BOUNDARY_TOL)[1]


# Printed phis: the answer with the fewest decimals (2 to 6) that still gives its
# network, the interval's ends on the 1e-6 grid, next_phi on the 1e-4 grid
# (finer when the next network's interval is narrower). Each is checked against
# the spec itself: the bisected boundaries are known to BOUNDARY_TOL only.
REPORT_DECIMALS = (2, 3, 4, 5, 6)
INTERVAL_DECIMALS = 6
NEXT_DECIMALS = (4, 5, 6)


def _grid_floor(value: float, decimals: int) -> float:
    scale = 10**decimals
    return round(math.floor(round(value * scale, 6)) / scale, decimals)


def _grid_ceil(value: float, decimals: int) -> float:
    scale = 10**decimals
    return round(math.ceil(round(value * scale, 6)) / scale, decimals)


def _report_phi(request: FitRequest, spec: NetworkSpec, low: float, high: float) -> float:
    """The largest phi with the fewest decimals (at least 2) inside [low, high) giving `spec`."""
    for decimals in REPORT_DECIMALS:
        step = 10.0**-decimals
        top = _grid_floor(high, decimals)
        for candidate in (top, round(top - step, decimals)):
            if low <= candidate < high and request.spec(candidate) == spec:
                return candidate
    return low  # an interval narrower than 1e-6: its bisected start, printed in full


def _interval_ends(request: FitRequest, spec: NetworkSpec, low: float, high: float) -> tuple[float, float]:
    """[low, high) on the 1e-6 grid: the first grid phi giving `spec`, and the first after it that does not.

    `low` and `high` are bisected (within BOUNDARY_TOL above each true breakpoint),
    so the grid value is the ceiling of each or one step below it.
    """
    step = 10.0**-INTERVAL_DECIMALS

    def first_grid_phi(boundary: float, gives_spec: bool) -> float:
        top = _grid_ceil(boundary, INTERVAL_DECIMALS)
        for candidate in (round(top - step, INTERVAL_DECIMALS), top):
            if candidate >= boundary - BOUNDARY_TOL and (request.spec(candidate) == spec) == gives_spec:
                return candidate
        return boundary  # an interval narrower than the grid: the bisected value itself

    return first_grid_phi(low, True), first_grid_phi(high, False)


def _phi_past(request: FitRequest, boundary: float) -> float:
    """The smallest short decimal giving the network that starts at `boundary`.

    `boundary` is the bisected first phi of a new network (within BOUNDARY_TOL
    above the true breakpoint); 1e-4 grid, finer if that network's interval is narrower.
    """
    after = request.spec(boundary)
    for decimals in NEXT_DECIMALS:
        first = _grid_ceil(boundary - BOUNDARY_TOL, decimals)
        for candidate in (first, round(first + 10.0**-decimals, decimals)):
            if request.spec(candidate) == after:
                return candidate
    return boundary


def _printed_phi(search: _Search, phi: float) -> float:
    """The phi tinyscale prints for the network at `phi` (the same rule as the result's)."""
    spec = search.request.spec(phi)
    high = search.boundary_above(phi, PHI_MAX) or PHI_MAX
    return _report_phi(search.request, spec, search.boundary_below(phi), high)


def _smallest_report(search: _Search) -> dict:
    """What the smallest network needs: the JSON `fit` prints when nothing fits."""
    request = search.request
    spec = request.spec(PHI_MIN)
    placement = search.placement(spec)
    latency = search.latency(spec)
    return {
        "fits": False,
        "target": request.target.name,
        "base": request.base,
        "classes": request.classes,
        "channels": request.channels,
        "alpha": request.coefficients.alpha,
        "beta": request.coefficients.beta,
        "gamma": request.coefficients.gamma,
        "phi_searched_down_to": PHI_MIN,
        "smallest_resolution": spec.resolution,
        "smallest_blocks": len(spec.blocks),
        "smallest_params": arch.count_params(spec),
        **placement.to_dict(),
        **latency_dict(request, latency),
        "binding": "+".join(placement.failing + latency_failing(request, latency)),
        "hint": _smaller_hint(search),
    }


def _smaller_hint(search: _Search) -> str:
    """Which smaller settings to try: other bases whose smallest network fits, fewer classes, 1 channel."""
    request = search.request
    fitting = []
    for name in arch.BASES:
        if name == request.base:
            continue
        other = FitRequest(request.target, name, request.classes, request.channels, request.coefficients,
                           request.max_latency_ms)
        if _Search(other, search.estimator).fits(PHI_MIN):
            fitting.append(name)
    options = [f"a base whose smallest network fits: {', '.join('--base ' + name for name in fitting)}"] if fitting else []
    if request.classes > 2:
        options.append("fewer --classes")
    if request.channels > 1:
        options.append("--channels 1")
    options.append("or a board with more memory" if request.max_latency_ms is None
                   else "a larger --max-latency-ms, or a faster board with more memory")
    hint = "try " + "; ".join(options)
    if fitting:
        return hint
    # Said before the suggestions, not as one of them: it is not something to try.
    others = ", ".join(name for name in arch.BASES if name != request.base)
    return f"no other base fits either (--base {others}); {hint}"


def _smallest_need(search: _Search) -> str:
    request = search.request
    spec = request.spec(PHI_MIN)
    placement = search.placement(spec)
    shortfall = [] if placement.fits else [placement.describe_shortfall()]
    latency = search.latency(spec)
    if latency_failing(request, latency):
        shortfall.append(f"latency {latency.latency_ms:,.2f} ms > {request.max_latency_ms:g} ms")
    return (
        f"the smallest {request.base} network ({spec.resolution} px, {len(spec.blocks)} blocks) "
        f"needs {', '.join(shortfall)} on {request.target.name}"
    )


def _nothing_fits(search: _Search) -> NothingFitsError:
    report = _smallest_report(search)
    return NothingFitsError(f"nothing fits: {_smallest_need(search)}; {report['hint']}", report)


PATCH_MODES = ("auto", "off")


def _unpatched_answer(request: FitRequest, estimator: Estimator) -> float | None:
    """The analytic --patch off answer (None when nothing fits unpatched): where the patched search starts."""
    try:
        return _fit(request, verify=False, prove_next=False, estimator=estimator, measurer=measured_memory,
                    progress=no_progress, patch="off", max_extra_macs=DEFAULT_MAX_EXTRA_MACS).phi
    except NothingFitsError:
        return None


def _start_search(request: FitRequest, estimator: Estimator, patch: str, max_extra_macs: float,
                  progress: Progress) -> tuple[_Search, tuple[float, float] | None, float | None]:
    """The search (its estimator patch-aware or not), its bracket, and the unpatched answer."""
    if patch == "off":
        search = _Search(request, estimator)
        progress(f"searching phi for {request.target.name} (analytic memory model)")
        if not search.fits(PHI_MIN):
            raise _nothing_fits(search)
        return search, search.bracket(), None
    from tinyscale.search.patch_fit import patched_estimator

    phi_unpatched = _unpatched_answer(request, estimator)
    search = _Search(request, patched_estimator(request.target, estimator, max_extra_macs))
    progress(f"searching phi for {request.target.name} with patch schedules (analytic memory model)")
    # Patching never makes a fitting network stop fitting, so the larger answer lies above
    # the unpatched one: start there, in small steps (each probe ranks schedules).
    if phi_unpatched is None:
        if not search.fits(PHI_MIN):
            raise _nothing_fits(search)
        return search, search.bracket(), None
    if phi_unpatched >= PHI_MAX:
        return search, None, phi_unpatched
    return search, search.bracket(phi_unpatched, 0.25), phi_unpatched


def _measure(search: _Search, spec: NetworkSpec, measurer: Measurer, progress: Progress) -> Measured:
    """Convert and measure `spec` as the search would run it: patched with its schedule, or not."""
    schedule = search.memory(spec).schedule
    if not schedule.patched:
        return measurer(spec)
    from tinyscale.search.patch_fit import measured_patched_memory

    return measured_patched_memory(spec, schedule, progress)


def check_latency_budget(request: FitRequest) -> None:
    """A latency budget needs a positive number and a cost table for the target's core (UsageError)."""
    budget = request.max_latency_ms
    if budget is None:
        return
    if not (budget > 0 and math.isfinite(budget)):
        raise UsageError(f"--max-latency-ms must be a positive number of milliseconds, got {budget!r}")
    target = request.target
    if cost_table(target.cpu, target.kernel_library) is None:
        raise UsageError(f"--max-latency-ms on {target.name}: {no_model_reason(target.cpu, target.kernel_library)}")


def fit(
    request: FitRequest,
    *,
    verify: bool = True,
    prove_next: bool = False,
    estimator: Estimator = analytic_memory,
    measurer: Measurer = measured_memory,
    progress: Progress = no_progress,
    patch: str = "off",
    max_extra_macs: float = DEFAULT_MAX_EXTRA_MACS,
) -> FitResult:
    """Find the largest phi whose network fits `request.target`; `progress(text)` hears each slow step.

    `patch="auto"` lets each network run its first stages in patches (the best
    schedule under `max_extra_macs`) when it does not fit unpatched.
    """
    if patch not in PATCH_MODES:
        raise UsageError(f"--patch is one of {', '.join(PATCH_MODES)} (got {patch!r})")
    check_latency_budget(request)
    request.coefficients.warn_if_unbalanced()
    return _fit(request, verify=verify, prove_next=prove_next, estimator=estimator, measurer=measurer,
                progress=progress, patch=patch, max_extra_macs=max_extra_macs)


def _fit(request: FitRequest, *, verify: bool, prove_next: bool, estimator: Estimator, measurer: Measurer,
         progress: Progress, patch: str, max_extra_macs: float) -> FitResult:
    start = time.perf_counter()
    search, bracket, phi_unpatched = _start_search(request, estimator, patch, max_extra_macs, progress)
    capped = bracket is None
    phi = PHI_MAX if bracket is None else search.largest_fitting(*bracket)
    search_seconds = time.perf_counter() - start

    measured = next_measured = None
    while True:
        spec = request.spec(phi)
        boundary = search.boundary_above(phi, PHI_MAX)
        next_phi = None if boundary is None or capped else _phi_past(request, boundary)
        if next_phi is not None and search.accepts(request.spec(next_phi)):
            # Two breakpoints closer than the search tolerance: keep climbing.
            phi = next_phi
            continue
        if not verify:
            break
        # The printed phi, not the bisection's: the log and the table say the same number.
        printed = format_phi(_printed_phi(search, phi))
        progress(f"verifying phi={printed} ({spec.resolution} px): int8 conversion and TFLM arena")
        measured = _measure(search, spec, measurer, progress)
        log.info("verified %s at phi=%s in %.1f s", request.base, printed, measured.seconds)
        if search.accepts(spec, measured):
            if prove_next and next_phi is not None:
                next_spec = request.spec(next_phi)
                progress(f"proving next phi={format_phi(next_phi)} ({next_spec.resolution} px) does not fit")
                next_measured = _measure(search, next_spec, measurer, progress)
                log.info("measured the next network at phi=%s in %.1f s", format_phi(next_phi), next_measured.seconds)
                if search.accepts(next_spec, next_measured):
                    log.warning("the estimate under-sized the next network; stepping up")
                    search.record_measurement(next_spec, next_measured)
                    phi = next_phi
                    continue
            break
        # The estimate was optimistic: record the truth and step one network down.
        log.warning("measurement exceeds the budget at phi=%s; stepping down", printed)
        search.record_measurement(spec, measured)
        low = search.boundary_below(phi)
        if low <= PHI_MIN:
            raise _nothing_fits(search)
        phi = low - BOUNDARY_TOL
        capped = False

    spec = request.spec(phi)
    low = search.boundary_below(phi)
    high = PHI_MAX if capped else (search.boundary_above(phi, PHI_MAX) or PHI_MAX)
    next_phi = None if capped or high >= PHI_MAX else _phi_past(request, high)
    estimate = search.estimate(spec)
    truth = measured or estimate
    reported_phi = PHI_MAX if capped else _report_phi(request, spec, low, high)
    if not capped:
        low, high = _interval_ends(request, spec, low, high)
    next_placement = next_latency = None
    if next_phi is not None:
        next_spec = request.spec(next_phi)
        next_memory = next_measured or search.memory(next_spec)
        next_placement = search.placement(next_spec, next_memory)
        next_latency = search.latency(next_spec, next_memory)
    return FitResult(
        request=request,
        phi=reported_phi,
        phi_low=low,
        phi_high=high,
        next_phi=next_phi,
        network=request.network(reported_phi),
        estimate=estimate,
        placement=search.placement(spec, truth),
        next_placement=next_placement,
        measured=measured,
        next_measured=next_measured,
        capped=capped,
        search_seconds=search_seconds,
        probes=search.probes,
        phi_unpatched=reported_phi if patch == "off" else phi_unpatched,
        latency=search.latency(spec, truth),
        next_latency=next_latency,
    )
