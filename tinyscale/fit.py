"""The fitter: the largest phi whose int8 TFLM model fits a target.

Memory grows monotonically with phi and the network is piecewise constant in
phi (rounding), so the search bisects on the analytic estimate, then pins the
exact phi interval that yields the answer's network and the first phi above it
that yields a bigger one. The answer is then verified by a real conversion and
TFLM measurement; if the measurement disagrees with the estimate the search
steps down one network at a time.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from tinyscale import arch
from tinyscale.arch import NetworkSpec, ScaledNetwork
from tinyscale.budget import Placement, place, selftest_flash_bytes
from tinyscale.errors import DoesNotFitError
from tinyscale.kernels import OpShapes, arena_margin_bytes, op_shapes
from tinyscale.progress import Progress, no_progress
from tinyscale.scaling import Coefficients
from tinyscale.targets import Target

log = logging.getLogger(__name__)

PHI_MIN = -20.0  # at or beyond the point where every dimension has hit its floor
PHI_MAX = 10.0  # ~B7 and beyond: larger than any microcontroller
# Bisection stops when the bracket is this narrow; breakpoints of the rounding
# are then located to BOUNDARY_TOL, well inside the reported 1e-4 precision.
SEARCH_TOL = 1e-4
BOUNDARY_TOL = 1e-7


@dataclass(frozen=True)
class Memory:
    """Flatbuffer and minimal arena size of one network, estimated or measured."""

    model_bytes: int
    arena_bytes: int


@dataclass(frozen=True)
class Measured(Memory):
    tflite: bytes = field(repr=False, default=b"")
    seconds: float = 0.0


Estimator = Callable[[NetworkSpec], Memory]
Measurer = Callable[[NetworkSpec], Measured]


def analytic_memory(spec: NetworkSpec) -> Memory:
    from tinyscale.estimate import estimate_memory

    estimate = estimate_memory(spec)
    return Memory(model_bytes=estimate.model_bytes, arena_bytes=estimate.arena_bytes)


def measured_memory(spec: NetworkSpec, progress: Progress = no_progress) -> Measured:
    """Build, convert to int8 and measure in TFLM (seconds; TensorFlow imported here)."""
    from tinyscale.convert import spec_to_tflite
    from tinyscale.tflm import measure_arena

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
    from tinyscale.estimate import tflite_graph

    graph = tflite_graph(spec)
    return tuple(op_shapes(graph.operators, graph.tensors))


def placement_for(target: Target, spec: NetworkSpec, memory: Memory) -> Placement:
    """Where `spec`'s model goes on `target`, with the kernel library's arena margin."""
    margin = arena_margin_bytes(_operator_shapes(spec), target.kernel_library, target.cpu)
    selftest = selftest_flash_bytes(spec.input_shape, spec.classes)
    return place(target, memory.model_bytes, memory.arena_bytes, margin, selftest)


@dataclass(frozen=True)
class FitRequest:
    target: Target
    base: str = "efficientnet-lite0"
    classes: int = 10
    channels: int = 3
    coefficients: Coefficients = field(default_factory=Coefficients)

    def network(self, phi: float) -> ScaledNetwork:
        return arch.scale(self.base, phi, self.coefficients, classes=self.classes, channels=self.channels)

    def spec(self, phi: float) -> NetworkSpec:
        return self.network(phi).spec


@dataclass(frozen=True)
class FitResult:
    request: FitRequest
    phi: float  # largest phi on a 0.01 grid (0.0001 if needed) giving the answer's network
    phi_low: float  # the answer's network is produced for phi in [phi_low, phi_high)
    phi_high: float
    next_phi: float | None  # smallest phi giving a different, larger network (None at PHI_MAX)
    network: ScaledNetwork
    estimate: Memory
    placement: Placement  # from the measurement when verified, else from the estimate
    next_placement: Placement | None  # the next network's (estimated) need
    measured: Measured | None
    next_measured: Measured | None = None
    capped: bool = False  # the search ceiling PHI_MAX itself fits
    search_seconds: float = 0.0
    probes: int = 0

    @property
    def verified(self) -> bool:
        return self.measured is not None

    @property
    def binding(self) -> str:
        """Which budget stops phi from growing: the one(s) the next network exceeds."""
        if self.capped or self.next_placement is None:
            return "none"
        failing = self.next_placement.failing
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
        }


class _Search:
    """Memoised evaluation of phi -> network -> memory -> placement."""

    def __init__(self, request: FitRequest, estimator: Estimator) -> None:
        self.request = request
        self.estimator = estimator
        self._estimates: dict[NetworkSpec, Memory] = {}
        # Measurements replace estimates once taken: the truth wins.
        self._measured: dict[NetworkSpec, Memory] = {}

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

    def fits(self, phi: float) -> bool:
        return self.placement(self.request.spec(phi)).fits

    def bracket(self) -> tuple[float, float] | None:
        """(lo, hi) with fits(lo) and not fits(hi), growing from PHI_MIN in doubling steps.

        Growing from the small end keeps every probe near the answer's size: a
        measured probe of a phi=10 network would need tens of GB to convert.
        None when PHI_MAX itself fits.
        """
        lo, step = PHI_MIN, 1.0
        while lo < PHI_MAX:
            hi = min(PHI_MAX, lo + step)
            if not self.fits(hi):
                return lo, hi
            lo, step = hi, step * 2
        return None

    def largest_fitting(self, lo: float, hi: float) -> float:
        """Bisect a bracket with fits(lo) and not fits(hi)."""
        while hi - lo > SEARCH_TOL:
            mid = (lo + hi) / 2
            if self.fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def boundary_above(self, phi: float, limit: float) -> float | None:
        """Smallest phi' in (phi, limit] whose network differs from phi's (to BOUNDARY_TOL)."""
        spec = self.request.spec(phi)
        if self.request.spec(limit) == spec:
            return None
        lo, hi = phi, limit
        while hi - lo > BOUNDARY_TOL:
            mid = (lo + hi) / 2
            if self.request.spec(mid) == spec:
                lo = mid
            else:
                hi = mid
        return hi

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
        lo, hi = candidate, lo
        while hi - lo > BOUNDARY_TOL:
            mid = (lo + hi) / 2
            if self.request.spec(mid) == spec:
                hi = mid
            else:
                lo = mid
        return hi


def _report_phi(request: FitRequest, spec: NetworkSpec, low: float, high: float) -> float:
    """The largest 0.01-grid phi giving `spec` (0.0001 grid if the interval is narrower).

    Checked against the spec itself, not only the interval arithmetic, since the
    interval's ends are known to BOUNDARY_TOL only.
    """
    for decimals in (2, 4, 6):
        scale = 10**decimals
        candidate = math.floor(high * scale) / scale
        if candidate >= high:
            candidate -= 1 / scale
        candidate = round(candidate, decimals)
        if candidate >= low and request.spec(candidate) == spec:
            return candidate
    return low


def _ceil_phi(phi: float) -> float:
    """Round a boundary up to 4 decimals so that the rounded value still lies past it."""
    return math.ceil(phi * 1e4 - 1e-9) / 1e4


def _smallest_need(search: _Search) -> str:
    spec = search.request.spec(PHI_MIN)
    placement = search.placement(spec)
    return (
        f"the smallest {search.request.base} network ({spec.resolution} px, {len(spec.blocks)} blocks) "
        f"needs {placement.describe_shortfall()} on {search.request.target.name}"
    )


def fit(
    request: FitRequest,
    *,
    verify: bool = True,
    prove_next: bool = False,
    estimator: Estimator = analytic_memory,
    measurer: Measurer = measured_memory,
    progress: Progress = no_progress,
) -> FitResult:
    """Find the largest phi whose network fits `request.target`; `progress(text)` hears each slow step."""
    request.coefficients.warn_if_unbalanced()
    search = _Search(request, estimator)
    start = time.perf_counter()
    progress(f"searching phi for {request.target.name} (analytic memory model)")
    if not search.fits(PHI_MIN):
        raise DoesNotFitError(f"nothing fits: {_smallest_need(search)}")
    bracket = search.bracket()
    capped = bracket is None
    phi = PHI_MAX if bracket is None else search.largest_fitting(*bracket)
    search_seconds = time.perf_counter() - start

    measured = next_measured = None
    while True:
        spec = request.spec(phi)
        boundary = search.boundary_above(phi, PHI_MAX)
        if boundary is not None and not capped:
            next_spec = request.spec(_ceil_phi(boundary))
            if search.placement(next_spec).fits:
                # Two breakpoints closer than the search tolerance: keep climbing.
                phi = _ceil_phi(boundary)
                continue
        if not verify:
            break
        progress(f"verifying phi={phi:.2f} ({spec.resolution} px): int8 conversion and TFLM arena")
        measured = measurer(spec)
        log.info("verified %s at phi=%.4f in %.1f s", request.base, phi, measured.seconds)
        if search.placement(spec, measured).fits:
            if prove_next and boundary is not None and not capped:
                next_spec = request.spec(_ceil_phi(boundary))
                progress(f"proving next phi={_ceil_phi(boundary):.4f} ({next_spec.resolution} px) does not fit")
                next_measured = measurer(next_spec)
                if search.placement(next_spec, next_measured).fits:
                    log.warning("the estimate under-sized the next network; stepping up")
                    search.record_measurement(request.spec(_ceil_phi(boundary)), next_measured)
                    phi = _ceil_phi(boundary)
                    continue
            break
        # The estimate was optimistic: record the truth and step one network down.
        log.warning("measurement exceeds the budget at phi=%.4f; stepping down", phi)
        search.record_measurement(spec, measured)
        low = search.boundary_below(phi)
        if low <= PHI_MIN:
            raise DoesNotFitError(f"nothing fits: {_smallest_need(search)}")
        phi = low - BOUNDARY_TOL
        capped = False

    spec = request.spec(phi)
    low = search.boundary_below(phi)
    high = PHI_MAX if capped else (search.boundary_above(phi, PHI_MAX) or PHI_MAX)
    next_phi = None if capped or high >= PHI_MAX else _ceil_phi(high)
    estimate = search.estimate(spec)
    truth = measured or estimate
    reported_phi = PHI_MAX if capped else _report_phi(request, spec, low, high)
    next_placement = None
    if next_phi is not None:
        next_spec = request.spec(next_phi)
        next_memory = next_measured or search.memory(next_spec)
        next_placement = search.placement(next_spec, next_memory)
    return FitResult(
        request=request,
        phi=reported_phi,
        phi_low=round(low, 6),
        phi_high=round(high, 6),
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
    )
