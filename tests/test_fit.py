"""The fitter's search logic, with a deterministic stand-in for the memory model.

The stand-in is monotone in the network like the real estimator; the real
estimator and TFLM measurement are exercised in test_fit_measured.py.
"""

from __future__ import annotations

import math

import pytest

from tinyscale.boards.budget import place
from tinyscale.errors import DoesNotFitError
from tinyscale.network import arch
from tinyscale.search.fit import (
    PHI_MAX,
    FitRequest,
    Measured,
    Memory,
    bisect,
    fit,
    placement_for,
)


@pytest.mark.parametrize("answer", [-7.6041, -0.5, 0.0, 2.25])
def test_bisect_brackets_where_the_predicate_turns_false(answer):
    probes = []

    def at_or_below(phi):
        probes.append(phi)
        return phi <= answer

    lo, hi = bisect(-10.0, 3.0, at_or_below, 1e-7)
    assert lo <= answer < hi and hi - lo <= 1e-7
    assert len(probes) == math.ceil(math.log2(13.0 / 1e-7))  # halves the bracket every probe


def proxy_memory(spec: arch.NetworkSpec) -> Memory:
    params = arch.count_params(spec)
    peak = max(layer.out_channels * layer.out_size**2 for layer in arch.layers(spec))
    return Memory(model_bytes=params + 20_000, arena_bytes=2 * peak + 4_000)


def never_called(spec):
    raise AssertionError("verification was not requested")


def request_for(target, base="efficientnet-lite0"):
    return FitRequest(target, base=base)


@pytest.mark.parametrize("base", ["efficientnet-lite0", "efficientnet-b0"])
@pytest.mark.parametrize("flash, arena", [(400_000, 100_000), (1_000_000, 300_000), (2_000_000, 80_000)])
def test_answer_fits_and_next_phi_does_not(synthetic_target, base, flash, arena):
    target = synthetic_target(flash, arena)
    result = fit(request_for(target, base), verify=False, estimator=proxy_memory, measurer=never_called)
    request = result.request
    spec = request.spec(result.phi)
    assert spec == result.network.spec
    memory = proxy_memory(spec)
    assert placement_for(target, spec, memory).fits
    assert result.phi_low <= result.phi < result.phi_high
    assert request.spec(result.phi_low + 1e-6) == spec
    assert request.spec(result.phi_high - 1e-6) == spec
    assert result.next_phi is not None and result.next_phi >= result.phi_high
    next_spec = request.spec(result.next_phi)
    assert next_spec != spec
    next_memory = proxy_memory(next_spec)
    assert not placement_for(target, next_spec, next_memory).fits
    assert result.binding in ("flash", "sram", "flash+sram")
    assert set(result.binding.split("+")) == set(result.next_placement.failing)


def test_answer_is_the_largest_on_a_fine_scan(synthetic_target):
    target = synthetic_target(700_000, 150_000)
    result = fit(request_for(target), verify=False, estimator=proxy_memory, measurer=never_called)
    request = result.request
    for step in range(1, 400):
        phi = result.phi_high + step * 0.005
        spec = request.spec(phi)
        assert not placement_for(target, spec, proxy_memory(spec)).fits, phi


def test_phi_reported_to_a_hundredth_when_the_interval_allows(synthetic_target):
    result = fit(request_for(synthetic_target(700_000, 150_000)), verify=False, estimator=proxy_memory)
    if result.phi_high - result.phi_low > 0.01:
        assert round(result.phi, 2) == result.phi
        assert result.phi_high - result.phi <= 0.01 + 1e-9


def test_nothing_fits_reports_what_the_smallest_needs(synthetic_target):
    with pytest.raises(DoesNotFitError, match="smallest efficientnet-lite0 network"):
        fit(request_for(synthetic_target(10_000, 2_000)), verify=False, estimator=proxy_memory)


def test_huge_budget_is_capped(synthetic_target):
    # 1 GB each: ~10x what the PHI_MAX network needs, and still inside a 32-bit address space.
    result = fit(request_for(synthetic_target(10**9, 10**9)), verify=False, estimator=proxy_memory)
    assert result.capped and result.next_phi is None and result.binding == "none"
    assert result.phi == pytest.approx(PHI_MAX)


def test_verification_steps_down_when_measurement_exceeds_estimate(synthetic_target):
    target = synthetic_target(1_000_000, 200_000)
    optimistic = fit(request_for(target), verify=False, estimator=proxy_memory)
    measured_specs = []

    def pessimistic_measurer(spec):
        measured_specs.append(spec)
        memory = proxy_memory(spec)
        # The estimate's first answer turns out 1 byte over budget when measured.
        extra = 10**6 if spec == optimistic.network.spec else 0
        return Measured(model_bytes=memory.model_bytes + extra, arena_bytes=memory.arena_bytes)

    result = fit(request_for(target), verify=True, estimator=proxy_memory, measurer=pessimistic_measurer)
    assert measured_specs[0] == optimistic.network.spec
    assert result.verified and result.placement.fits
    assert result.phi < optimistic.phi_low
    assert result.network.spec != optimistic.network.spec
    assert result.next_phi is not None and result.next_phi <= optimistic.phi_high


def test_prove_measures_the_next_network(synthetic_target):
    calls = []

    def measurer(spec):
        calls.append(spec)
        memory = proxy_memory(spec)
        return Measured(memory.model_bytes, memory.arena_bytes)

    result = fit(request_for(synthetic_target(800_000, 120_000)), prove_next=True, estimator=proxy_memory, measurer=measurer)
    assert calls == [result.network.spec, result.request.spec(result.next_phi)]
    assert result.to_dict()["next_verified"] is True


def test_sram_regions_in_preference_order(synthetic_target):
    # Two regions: a small fast one listed first, a big one second (like internal RAM + PSRAM).
    target = synthetic_target(10**9, [50_000, 10**9])
    small = place(target, 1000, 40_000)
    big = place(target, 1000, 60_000)
    assert small.arena_region == "ram0" and big.arena_region == "ram1"


def test_result_json_has_the_documented_keys(synthetic_target):
    result = fit(request_for(synthetic_target(700_000, 150_000)), verify=False, estimator=proxy_memory)
    data = result.to_dict()
    for key in (
        "target", "base", "phi", "next_phi", "depth_multiplier", "width_multiplier", "resolution", "params",
        "macs", "model_bytes", "arena_bytes", "flash_needed_bytes", "sram_needed_bytes", "flash_budget_bytes",
        "sram_budget_bytes", "binding", "verified",
    ):
        assert key in data
    assert data["verified"] is False


def test_logged_phi_is_the_printed_phi(synthetic_target, caplog):
    import logging

    from tinyscale.network.scaling import format_phi

    def measurer(spec):
        memory = proxy_memory(spec)
        return Measured(memory.model_bytes, memory.arena_bytes)

    with caplog.at_level(logging.INFO, logger="tinyscale"):
        result = fit(request_for(synthetic_target(800_000, 120_000)), estimator=proxy_memory, measurer=measurer)
    verified = [record.getMessage() for record in caplog.records if record.getMessage().startswith("verified")]
    assert verified == [f"verified efficientnet-lite0 at phi={format_phi(result.phi)} in 0.0 s"]


def test_prove_puts_the_next_networks_measured_figures_in_table_and_json(synthetic_target):
    from tinyscale.commands.core import _fit_table

    def measurer(spec):  # measurements a little above the estimate, so the two are told apart
        memory = proxy_memory(spec)
        return Measured(memory.model_bytes + 8, memory.arena_bytes + 16)

    result = fit(request_for(synthetic_target(800_000, 120_000)), prove_next=True, estimator=proxy_memory,
                 measurer=measurer)
    data = result.to_dict()
    following = data["next"]
    measured = measurer(result.request.spec(result.next_phi))
    assert following["measured"] is True and following["fits"] is False
    assert (following["model_bytes"], following["arena_bytes"]) == (measured.model_bytes, measured.arena_bytes)
    table = _fit_table(result, data, None)
    assert (f"model {measured.model_bytes:,} B, arena {measured.arena_bytes:,} B (measured in TFLM by --prove)"
            in table)
    budget, need = following["sram_budget_bytes"], following["sram_needed_bytes"]
    assert f"{need:,} / {budget:,} B" in table and f"over by {need - budget:,} B" in table


def test_nothing_fits_error_carries_the_smallest_networks_need(synthetic_target):
    from tinyscale.errors import NothingFitsError

    with pytest.raises(NothingFitsError) as caught:
        fit(request_for(synthetic_target(10_000, 2_000)), verify=False, estimator=proxy_memory)
    report = caught.value.report
    smallest = proxy_memory(request_for(synthetic_target(10_000, 2_000)).spec(-20.0))
    assert report["fits"] is False and report["model_bytes"] == smallest.model_bytes
    assert report["arena_bytes"] == smallest.arena_bytes and report["binding"] == "flash+sram"
    assert caught.value.exit_code == 3 and report["hint"] in str(caught.value)
