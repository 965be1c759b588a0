"""The generated mps2-an386 project built against real TFLite Micro and run under QEMU.

Skips unless TFLM_ROOT names a tree made by TFLM's create_tflm_tree.py. A tree
with third_party/cmsis_nn builds with CMSIS-NN; TFLM_REFERENCE_ROOT may name a
second tree made without OPTIMIZED_KERNEL_DIR for the reference kernels:

    TFLM_ROOT=path/to/tree-cmsis TFLM_REFERENCE_ROOT=path/to/tree-ref \
        pytest -s tests/test_firmware_integration.py

A cold TFLM build takes minutes; set TINYSCALE_FIRMWARE_BUILD_DIR to keep the
build directories between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import firmware_sizes  # noqa: E402
import patch_firmware  # noqa: E402

TINY_MODEL = Path(__file__).parent / "golden" / "tiny.tflite"
TREES = {
    firmware_sizes.kernels_of(Path(root)): Path(root)
    for root in (os.environ.get("TFLM_ROOT"), os.environ.get("TFLM_REFERENCE_ROOT"))
    if root and (Path(root) / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file()
}
MISSING_TOOLS = [tool for tool in ("cmake", "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
                 if not shutil.which(tool)]

pytestmark = [
    pytest.mark.skipif(not TREES, reason="set TFLM_ROOT to a TFLite Micro tree made by create_tflm_tree.py"),
    pytest.mark.skipif(bool(MISSING_TOOLS), reason=f"missing tools: {', '.join(MISSING_TOOLS)}"),
]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    kept = os.environ.get("TINYSCALE_FIRMWARE_BUILD_DIR")
    return Path(kept) if kept else tmp_path_factory.mktemp("firmware-builds")


@pytest.mark.parametrize("kernels", ["cmsis-nn", "reference"])
def test_mps2_firmware_passes_its_selftest_under_qemu(kernels, work):
    if kernels not in TREES:
        pytest.skip(f"no {kernels} TFLM tree (TFLM_ROOT / TFLM_REFERENCE_ROOT)")
    row = firmware_sizes.measure(TINY_MODEL.read_bytes(), "tiny", TREES[kernels], work)
    print("\n" + json.dumps(row, indent=2))
    (work / f"report-{kernels}.json").write_text(json.dumps(row, indent=2) + "\n")

    assert row["selftest"] == "PASS"
    assert row["outputs_printed"] > 0
    if kernels == "reference":
        # The same integer kernels as the host interpreter: bit-identical outputs.
        assert row["max_diff_vs_host"] == 0
    else:
        assert row["max_diff_vs_host"] <= 1
    # The arena sized from the host measurement was enough, and the image fits the prediction.
    assert row["device_arena_used_bytes"] <= row["arena_bytes"]
    assert row["linked_flash_bytes"] <= row["predicted_flash_bytes"]
    assert row["linked_ram_bytes"] <= row["predicted_ram_bytes"]


@pytest.mark.parametrize("kind", ["int8-float", "int16-int16", "int16-float"])
@pytest.mark.parametrize("kernels", ["cmsis-nn", "reference"])
def test_mps2_firmware_passes_its_selftest_for_every_io_layout(kernels, kind, work):
    if kernels not in TREES:
        pytest.skip(f"no {kernels} TFLM tree (TFLM_ROOT / TFLM_REFERENCE_ROOT)")
    from conftest import quantized_model

    # The tiny test's build directory: only the application recompiles.
    row = firmware_sizes.measure(quantized_model(kind), kind, TREES[kernels], work, slot_label="tiny")
    print("\n" + json.dumps(row, indent=2))
    assert row["selftest"] == "PASS" and row["outputs_printed"] == 3
    assert row["output_dtype"] == ("float32" if kind.endswith("float") else kind.split("-")[1])
    assert row["device_max_diff"] <= row["tolerance"]
    if kernels == "reference":  # the host's integer kernels and the same float (de)quantization
        assert row["device_max_diff"] == 0


# ---------------------------------------------------------------------------
# Patched models (issue 8): the same firmware, STRIDED_SLICE/PAD/CONCATENATION in
# its op resolver, exact on the device too.

_UNPATCHED: dict[str, dict] = {}


def _unpatched_row(kernels: str, work: Path) -> dict:
    """The unpatched tiny model's device row, measured once per tree (in the tiny slot)."""
    if kernels not in _UNPATCHED:
        _UNPATCHED[kernels] = firmware_sizes.measure(TINY_MODEL.read_bytes(), "tiny", TREES[kernels], work)
    return _UNPATCHED[kernels]


@pytest.mark.parametrize("grid", patch_firmware.TINY_GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("kernels", ["cmsis-nn", "reference"])
def test_patched_mps2_firmware_is_exact_under_qemu(kernels, grid, work):
    if kernels not in TREES:
        pytest.skip(f"no {kernels} TFLM tree (TFLM_ROOT / TFLM_REFERENCE_ROOT)")
    model = TINY_MODEL.read_bytes()
    result = patch_firmware.patched(model, grid, patch_firmware.tiny_split(model))
    assert result.patched and result.grid == grid and result.max_diff == 0
    label = f"tiny-{grid[0]}x{grid[1]}"
    row = firmware_sizes.measure(result.data, label, TREES[kernels], work, slot_label="tiny")
    unpatched = _unpatched_row(kernels, work)
    report = {"patched": row, "unpatched": unpatched}
    print("\n" + json.dumps(report, indent=2))
    (work / f"report-{label}-{kernels}.json").write_text(json.dumps(report, indent=2) + "\n")

    assert row["selftest"] == "PASS" and unpatched["selftest"] == "PASS"
    assert row["outputs_printed"] == unpatched["outputs_printed"] > 0
    if kernels == "reference":
        assert row["max_diff_vs_host"] == 0
    # Patching is exact on the device as on the host: the kernel library computes
    # each output element of a tile as it does in the full map.
    assert row["device_outputs"] == unpatched["device_outputs"]
    # The arena rule (host minimum + kernel scratch + slack) covers the patched graph.
    assert row["device_arena_used_bytes"] <= row["arena_bytes"]
    assert row["linked_flash_bytes"] <= row["predicted_flash_bytes"]
    assert row["linked_ram_bytes"] <= row["predicted_ram_bytes"]
