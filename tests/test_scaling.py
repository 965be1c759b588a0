"""Compound scaling math and the reference rounding rules."""

import math

import pytest

from tinyscale.errors import UsageError
from tinyscale.network.scaling import (
    MIN_RESOLUTION,
    Coefficients,
    check_phi,
    round_filters,
    round_repeats,
    round_resolution,
)


def test_paper_coefficients_double_flops_per_unit_phi():
    assert Coefficients().flops_base == pytest.approx(1.2 * 1.1**2 * 1.15**2)
    assert abs(Coefficients().flops_base - 2.0) < 0.1


@pytest.mark.parametrize(
    "filters, multiplier, expected",
    [
        (32, 1.0, 32),
        (32, 1.1, 32),  # 35.2 rounds to 32 (>= 90% of 35.2)
        (32, 1.2, 40),  # B2's stem (TPU builder)
        (1280, 1.1, 1408),  # B2's head
        (16, 0.5, 8),
        (24, 0.5, 16),  # 12 -> nearest multiple 16 (int(12+4)//8*8)
        (40, 0.3, 16),  # 12 -> 16
        (8, 0.1, 8),  # never below the divisor
        (112, 0.6209, 72),  # 69.5 -> 72
    ],
)
def test_round_filters_matches_tpu_builder(filters, multiplier, expected):
    assert round_filters(filters, multiplier) == expected


def test_round_filters_never_drops_more_than_ten_percent():
    for filters in (16, 24, 40, 80, 112, 192, 320, 1280):
        for multiplier in [m / 100 for m in range(10, 300, 7)]:
            rounded = round_filters(filters, multiplier)
            assert rounded % 8 == 0
            assert rounded >= 0.9 * filters * multiplier or rounded == 8


def test_round_repeats_rounds_up():
    assert round_repeats(1, 0.1) == 1
    assert round_repeats(3, 0.5) == 2
    assert round_repeats(4, 1.0) == 4
    assert round_repeats(4, 1.8) == 8  # B4's 4-repeat stage: ceil(7.2)


def test_round_resolution_multiple_of_eight_with_floor():
    assert round_resolution(224, 1.0) == 224
    assert round_resolution(224, 1.15**-4) == 128
    assert round_resolution(224, 1.15**-6) == 96
    assert round_resolution(224, 1.15**-8) == 72
    assert round_resolution(224, 1e-3) == MIN_RESOLUTION
    for phi in range(-20, 6):
        assert round_resolution(224, 1.15**phi) % 8 == 0


def test_multipliers_follow_the_paper():
    depth, width, res = Coefficients().multipliers(-2.5)
    assert depth == pytest.approx(1.2**-2.5)
    assert width == pytest.approx(1.1**-2.5)
    assert res == pytest.approx(1.15**-2.5)


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, math.nan, math.inf])
def test_invalid_coefficients_rejected(bad):
    with pytest.raises(UsageError):
        Coefficients(alpha=bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -100.0, 50.0])
def test_invalid_phi_rejected(bad):
    with pytest.raises(UsageError):
        check_phi(bad)


def test_unbalanced_coefficients_warn(caplog):
    Coefficients(2.0, 1.5, 1.5).warn_if_unbalanced()
    assert "far from 2" in caplog.text
    caplog.clear()
    Coefficients().warn_if_unbalanced()
    assert caplog.text == ""
