"""The fitter's "largest" property against real conversions and TFLM measurement.

Budgets are set around the measured memory of a tiny network so the answer is
a small network (conversion ~1 s); both the answer and next_phi are converted
and measured (prove_next).
"""

from __future__ import annotations

import pytest

from tinyscale.search.fit import FitRequest, fit, measured_memory, placement_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("base", ["tiny", "tiny-se"])
def test_answer_fits_and_next_phi_does_not_both_measured(synthetic_target, base):
    probe = FitRequest(synthetic_target(10**9, 10**9), base=base)
    need = placement_for(probe.target, probe.spec(0.0), measured_memory(probe.spec(0.0)))
    # Budgets 3% above the phi=0 network's measured need: the answer is near phi=0.
    target = synthetic_target(int(need.flash_needed_bytes * 1.03), int(need.sram_needed_bytes * 1.03))
    result = fit(FitRequest(target, base=base), prove_next=True)

    assert result.verified and result.next_measured is not None
    answer = result.measured
    assert placement_for(target, result.network.spec, answer).fits
    nxt = result.next_measured
    assert not placement_for(target, result.request.spec(result.next_phi), nxt).fits
    assert result.request.spec(result.next_phi) != result.network.spec
    assert result.phi >= 0.0  # phi=0 fits by construction, so the answer is at least that
