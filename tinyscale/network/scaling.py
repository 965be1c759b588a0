"""Compound scaling (Tan & Le, ICML 2019) and the reference rounding rules.

One coefficient phi scales depth by alpha**phi, width by beta**phi and input
resolution by gamma**phi. Rounding follows the TPU EfficientNet builder so that
phi=0 reproduces the published B0 exactly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from tinyscale.errors import UsageError

log = logging.getLogger(__name__)

PAPER_ALPHA = 1.2
PAPER_BETA = 1.1
PAPER_GAMMA = 1.15

CHANNEL_DIVISOR = 8
RESOLUTION_DIVISOR = 8
# Five stride-2 stages take 32 px down to 1x1; below that the network has no
# spatial extent left for its last stages.
MIN_RESOLUTION = 32
# The paper constrains alpha*beta^2*gamma^2 ~= 2 so that each unit of phi
# doubles the FLOPs. Warn (not fail) beyond this relative deviation.
FLOPS_BASE_TOLERANCE = 0.1


@dataclass(frozen=True)
class Coefficients:
    """Per-unit-phi growth factors of depth, width and resolution."""

    alpha: float = PAPER_ALPHA
    beta: float = PAPER_BETA
    gamma: float = PAPER_GAMMA

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1.0):
                raise UsageError(f"{name} must be a finite number >= 1, got {value!r}")

    @property
    def flops_base(self) -> float:
        """alpha * beta^2 * gamma^2: the FLOPs growth per unit of phi."""
        return self.alpha * self.beta**2 * self.gamma**2

    def warn_if_unbalanced(self) -> None:
        if abs(self.flops_base - 2.0) > 2.0 * FLOPS_BASE_TOLERANCE:
            log.warning(
                "alpha*beta^2*gamma^2 = %.3f, far from 2: one unit of phi no longer doubles FLOPs",
                self.flops_base,
            )

    def multipliers(self, phi: float) -> tuple[float, float, float]:
        """(depth, width, resolution) multipliers at phi."""
        check_phi(phi)
        return self.alpha**phi, self.beta**phi, self.gamma**phi


def format_phi(phi: float) -> str:
    """phi as every table, log line and README prints it: the shortest text that
    parses back to the same float, so passing it to `scale --phi`, `train --phi`
    or `build` gives the same network (fit reports phis that are short decimals)."""
    text = repr(float(phi))
    return text[:-2] if text.endswith(".0") else text


def check_phi(phi: float) -> None:
    if not (isinstance(phi, (int, float)) and math.isfinite(phi)):
        raise UsageError(f"phi must be a finite number, got {phi!r}")
    # Beyond these the multipliers are meaningless for a microcontroller and
    # the float arithmetic starts to underflow the rounding rules.
    if not -40.0 <= phi <= 20.0:
        raise UsageError(f"phi must lie in [-40, 20], got {phi}")


def round_filters(filters: int, width_multiplier: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Scale a channel count and round it to a multiple of `divisor`.

    As in the TPU builder: round to the nearest multiple, never below
    `divisor`, and never more than 10% below the scaled value.
    """
    scaled = filters * width_multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_multiplier: float) -> int:
    """Scale a stage's block count, rounding up (a stage never vanishes)."""
    return int(math.ceil(depth_multiplier * repeats))


def round_resolution(base_resolution: int, resolution_multiplier: float) -> int:
    """Scale the input side to the nearest multiple of 8, at least MIN_RESOLUTION."""
    scaled = base_resolution * resolution_multiplier
    rounded = int(scaled / RESOLUTION_DIVISOR + 0.5) * RESOLUTION_DIVISOR
    return max(MIN_RESOLUTION, rounded)
