"""The candidate coefficients `tinyscale tune` tries (pure: no TensorFlow, no search).

The paper searches alpha, beta, gamma under alpha * beta^2 * gamma^2 = 2 with
each >= 1. In logarithms that constraint is a simplex: with
alpha = 2^a, beta = 2^(b/2), gamma = 2^(c/2), it reads a + b + c = 1 with
a, b, c >= 0, the shares of each doubling of FLOPs that go to depth, width and
resolution. `grid(steps)` is the regular lattice on that triangle (steps per
side), gamma solved from alpha and beta; the paper's (1.2, 1.1, 1.15) is always
added as it is published, although it satisfies the constraint only
approximately (1.2 * 1.1^2 * 1.15^2 = 1.920).
"""

from __future__ import annotations

import math
import re

from tinyscale.errors import UsageError
from tinyscale.network.scaling import Coefficients

FLOPS_BASE = 2.0
PAPER = Coefficients()  # (1.2, 1.1, 1.15)
DEFAULT_GRID_STEPS = 2  # 6 lattice points + the paper's: 7 candidates
MAX_GRID_STEPS = 20  # 231 candidates: more trials than anyone trains


def solve_gamma(alpha: float, beta: float) -> float:
    """gamma with alpha * beta^2 * gamma^2 = 2, or UsageError when alpha and beta already exceed it."""
    if alpha < 1 or beta < 1:
        raise UsageError(f"alpha and beta must be >= 1, got {alpha:g}, {beta:g}")
    square = FLOPS_BASE / (alpha * beta * beta)
    # 1e-12: the lattice's gamma = 1 corner computes as 0.9999999999999999.
    if square < 1 - 1e-12:
        raise UsageError(f"alpha {alpha:g} and beta {beta:g} leave no gamma >= 1 under alpha*beta^2*gamma^2 = 2 "
                         f"(alpha*beta^2 = {alpha * beta * beta:.4g} > 2)")
    return max(1.0, math.sqrt(square))


def lattice(steps: int) -> list[Coefficients]:
    """The (steps+1)(steps+2)/2 points of the simplex lattice, depth share falling, then width's."""
    if not isinstance(steps, int) or not 1 <= steps <= MAX_GRID_STEPS:
        raise UsageError(f"--grid N takes 1 to {MAX_GRID_STEPS} steps per side, got {steps!r}")
    points = []
    for i in range(steps, -1, -1):  # depth's share i/steps
        for j in range(steps - i, -1, -1):  # width's share j/steps; resolution's the rest
            alpha, beta = 2.0 ** (i / steps), 2.0 ** (j / steps / 2)
            points.append(Coefficients(alpha, beta, solve_gamma(alpha, beta)))
    return points


def with_paper(candidates: list[Coefficients]) -> list[Coefficients]:
    """The paper's point first (the baseline every table compares with), then the rest without repeats."""
    out: list[Coefficients] = [PAPER]
    for candidate in candidates:
        if candidate not in out:
            out.append(candidate)
    return out


_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_CANDIDATE = re.compile(rf"^({_NUMBER}),({_NUMBER})(?:,({_NUMBER}))?$")


def parse_candidates(text: str) -> list[Coefficients]:
    """`alpha,beta[,gamma]` candidates separated by `;` or spaces; a missing gamma is solved from the constraint.

    A given gamma is kept as given (like the paper's point, it may satisfy the
    constraint only approximately).
    """
    items = [item for item in re.split(r"[;\s]+", text.strip()) if item]
    if not items:
        raise UsageError("--grid: no candidates given (alpha,beta[,gamma] separated by ';')")
    candidates = []
    for item in items:
        match = _CANDIDATE.match(item)
        if match is None:
            raise UsageError(f"--grid: {item!r} is not alpha,beta[,gamma] (numbers >= 1) or a step count")
        alpha, beta = float(match[1]), float(match[2])
        gamma = float(match[3]) if match[3] else solve_gamma(alpha, beta)
        candidates.append(Coefficients(alpha, beta, gamma))
    return candidates


def grid_steps(grid: str | None) -> int | None:
    """The lattice's steps per side that --grid asks for, or None for an explicit list."""
    text = (grid or str(DEFAULT_GRID_STEPS)).strip()
    return int(text) if text.isdigit() else None


def candidates(grid: str | None) -> list[Coefficients]:
    """What --grid asks for: a step count N (the lattice), or an explicit list; the paper's point always first."""
    steps = grid_steps(grid)
    return with_paper(lattice(steps) if steps is not None else parse_candidates(grid.strip()))
