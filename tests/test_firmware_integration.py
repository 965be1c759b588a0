"""The generated projects of QEMU's Cortex-M boards built against real TFLite Micro and run under QEMU.

Each board needs TFLM trees made by TFLM's create_tflm_tree.py for its core
(TARGET=cortex_m_generic TARGET_ARCH=<arch>, with OPTIMIZED_KERNEL_DIR=cmsis_nn
for CMSIS-NN, without it for the reference kernels), named by environment
variables; a test whose tree is not set skips, naming the variable:

    board        core         TARGET_ARCH    CMSIS-NN tree             reference tree
    mps2-an386   Cortex-M4    cortex-m4+fp   TFLM_ROOT                 TFLM_REFERENCE_ROOT
    mps2-an500   Cortex-M7    cortex-m7+fp   TFLM_ROOT_CORTEX_M7       TFLM_REFERENCE_ROOT_CORTEX_M7
    mps2-an505   Cortex-M33   cortex-m33     TFLM_ROOT_CORTEX_M33      TFLM_REFERENCE_ROOT_CORTEX_M33
    mps3-an547   Cortex-M55   cortex-m55     TFLM_ROOT_CORTEX_M55      TFLM_REFERENCE_ROOT_CORTEX_M55
    (mps2-an386) Cortex-M0+   cortex-m0plus  TFLM_ROOT_CORTEX_M0PLUS   -

(the M0+ has no QEMU board: its ARMv6-M build runs on the AN386's M4 model,
benchmarks/latency_measure.py's HOSTED_CORES)

(the rule: TFLM_ROOT / TFLM_REFERENCE_ROOT plus the board's cpu upper-cased with
"-" as "_"; the Cortex-M4 also takes the plain names). A tree with
third_party/cmsis_nn builds with CMSIS-NN whatever variable names it.

    TFLM_ROOT=path/to/tree-cmsis TFLM_REFERENCE_ROOT=path/to/tree-ref \
    TFLM_ROOT_CORTEX_M55=path/to/tree-m55-cmsis ... \
        pytest -s tests/test_firmware_integration.py

A cold TFLM build takes 10-20 minutes per tree; set TINYSCALE_FIRMWARE_BUILD_DIR
to keep the build directories between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import firmware_sizes  # noqa: E402
import patch_firmware  # noqa: E402

from tinyscale.boards.targets import load_target

TINY_MODEL = Path(__file__).parent / "golden" / "tiny.tflite"
KERNELS = ("cmsis-nn", "reference")
QEMU_BOARDS = ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547")
MISSING_TOOLS = [tool for tool in ("cmake", "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
                 if not shutil.which(tool)]


tree_variables, tree_for = firmware_sizes.tree_variables, firmware_sizes.tree_for


pytestmark = pytest.mark.skipif(bool(MISSING_TOOLS), reason=f"missing tools: {', '.join(MISSING_TOOLS)}")


def require_tree(kernels: str, cpu: str = "cortex-m4") -> Path:
    tree = tree_for(cpu, kernels)
    if tree is None:
        names = " or ".join(tree_variables(cpu, kernels))
        pytest.skip(f"set {names} to a {kernels} TFLite Micro tree made by create_tflm_tree.py for {cpu}")
    if firmware_sizes.kernels_of(tree) != kernels:
        pytest.skip(f"{tree} holds {firmware_sizes.kernels_of(tree)} kernels, not {kernels}")
    return tree


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    kept = os.environ.get("TINYSCALE_FIRMWARE_BUILD_DIR")
    return Path(kept) if kept else tmp_path_factory.mktemp("firmware-builds")


@pytest.mark.parametrize("kernels", ["cmsis-nn", "reference"])
def test_mps2_firmware_passes_its_selftest_under_qemu(kernels, work):
    require_tree(kernels)
    row = firmware_sizes.measure(TINY_MODEL.read_bytes(), "tiny", require_tree(kernels), work)
    print("\n" + json.dumps(row, indent=2))
    (work / f"report-{kernels}.json").write_text(json.dumps(row, indent=2) + "\n")

    assert row["selftest"] == "PASS"
    assert row["outputs_printed"] > 0
    if kernels == "reference":
        # The same integer kernels as the host interpreter: bit-identical outputs.
        assert row["max_diff_vs_host"] == 0
    else:
        assert row["max_diff_vs_host"] <= 1
    # The arena sized from the 32-bit model was enough, the firmware used what it predicted
    # to the byte, and the image fits the prediction.
    assert row["device_arena_used_bytes"] <= row["arena_bytes"]
    assert row["device_arena_used_bytes"] == row["predicted_device_arena_used_bytes"]
    assert row["linked_flash_bytes"] <= row["predicted_flash_bytes"]
    assert row["linked_ram_bytes"] <= row["predicted_ram_bytes"]


@pytest.mark.parametrize("kind", ["int8-float", "int16-int16", "int16-float"])
@pytest.mark.parametrize("kernels", ["cmsis-nn", "reference"])
def test_mps2_firmware_passes_its_selftest_for_every_io_layout(kernels, kind, work):
    require_tree(kernels)
    from conftest import quantized_model

    # The tiny test's build directory: only the application recompiles.
    row = firmware_sizes.measure(quantized_model(kind), kind, require_tree(kernels), work, slot_label="tiny")
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
        _UNPATCHED[kernels] = firmware_sizes.measure(TINY_MODEL.read_bytes(), "tiny", require_tree(kernels), work)
    return _UNPATCHED[kernels]


@pytest.mark.parametrize("grid", patch_firmware.TINY_GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("kernels", ["cmsis-nn", "reference"])
def test_patched_mps2_firmware_is_exact_under_qemu(kernels, grid, work):
    require_tree(kernels)
    model = TINY_MODEL.read_bytes()
    result = patch_firmware.patched(model, grid, patch_firmware.tiny_split(model))
    assert result.patched and result.grid == grid and result.max_diff == 0
    label = f"tiny-{grid[0]}x{grid[1]}"
    row = firmware_sizes.measure(result.data, label, require_tree(kernels), work, slot_label="tiny")
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


# ---------------------------------------------------------------------------
# Every Cortex-M class of the bundled boards (issue 10): the M7, M33 and M55 boards
# QEMU emulates, each with trees made for its core.


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("target_name", [name for name in QEMU_BOARDS if name != "mps2-an386"])
def test_qemu_board_passes_its_selftest_bit_identical(target_name, kernels, work):
    cpu = load_target(target_name).cpu
    tree = require_tree(kernels, cpu)
    row = firmware_sizes.measure(TINY_MODEL.read_bytes(), "tiny", tree, work, target_name=target_name)
    print("\n" + json.dumps(row, indent=2))
    (work / f"report-{target_name}-{kernels}.json").write_text(json.dumps(row, indent=2) + "\n")

    assert row["selftest"] == "PASS" and row["outputs_printed"] > 0
    # Integer kernels, CMSIS-NN's DSP and MVE ones included, round as the host's do.
    assert row["max_diff_vs_host"] == 0 and row["device_max_diff"] == 0
    # Sized from the 32-bit model (CMSIS-NN's MVE scratch on the M55 included), used as predicted.
    assert row["device_arena_used_bytes"] <= row["arena_bytes"]
    assert row["device_arena_used_bytes"] == row["predicted_device_arena_used_bytes"]
    assert row["linked_flash_bytes"] <= row["predicted_flash_bytes"]
    assert row["linked_ram_bytes"] <= row["predicted_ram_bytes"]


# ---------------------------------------------------------------------------
# The per-operator profile (issue 10 item 2): `firmware --profile` under -icount shift=0.


@pytest.mark.parametrize("kernels", KERNELS)
def test_profiled_tiny_model_prints_one_line_per_operator_summing_to_the_invoke(kernels, work):
    import latency_measure  # noqa: PLC0415 - a benchmark module

    from tinyscale.graph.flatbuffer import read_flatbuffer  # noqa: PLC0415

    tree = require_tree(kernels)
    model = TINY_MODEL.read_bytes()
    target = firmware_sizes.mps2_target(kernels)
    # The tiny test's build directory: TFLM is compiled already, only the application rebuilds.
    profile = latency_measure.profiled_run(model, "tiny", target, tree, work / f"tiny-{kernels}", timeout=600)
    print("\n" + "\n".join(f"PROFILE {e.index} {e.tag} {e.ticks}" for e in profile.events))

    assert profile.passed and profile.dropped == 0
    assert [e.tag for e in profile.events] == [op.kind for op in read_flatbuffer(model).graph.operators]
    assert all(e.ticks > 0 for e in profile.events)
    # Between operators the interpreter does little: the operators are >= 99% of the Invoke.
    assert profile.total_ticks <= profile.invoke_ticks <= profile.total_ticks * 1.01
    # SysTick ticks and the self-test's microsecond timer agree (1 us = 1000 instructions).
    invoke = latency_measure.ticks_to_instructions(profile.invoke_ticks, profile.ticks_per_second)
    assert abs(profile.inference_us * 1000 - invoke) <= 2000
    # -icount makes the counts deterministic: a second run prints the same ticks.
    again = latency_measure.profiled_run(model, "tiny", target, tree, work / f"tiny-{kernels}", timeout=600)
    assert again.events == profile.events


def test_cortex_m0plus_build_runs_on_the_m4_model_with_armv6m_code_only(work):
    """The Cortex-M0+ build that the M0+ cost table is measured with: ARMv6-M code alone, on mps2-an386."""
    import latency_measure  # noqa: PLC0415 - a benchmark module

    target = latency_measure.measurement_target("cmsis-nn", "mps2-an386-m0plus")
    tree = require_tree("cmsis-nn", target.cpu)
    slot = work / "tiny-m0plus-cmsis-nn"
    profile = latency_measure.profiled_run(TINY_MODEL.read_bytes(), "tiny", target, tree, slot, timeout=600)

    assert target.cpu == "cortex-m0plus" and target.fpu is None
    assert latency_measure.qemu_machine(target) == "mps2-an386"
    assert profile.passed and profile.dropped == 0
    # The image holds no instruction the M0+ lacks (profiled_run checked it too), and the
    # check does find them in the M4's image.
    assert latency_measure.armv6m_violations(slot / "build" / "app.elf") == []
    m4_elf = work / "tiny-cmsis-nn" / "build" / "app.elf"
    if m4_elf.is_file():
        assert latency_measure.armv6m_violations(m4_elf)
    assert "-mcpu=cortex-m0plus" in (slot / "project" / "cmake" / "arm-none-eabi.cmake").read_text()


# ---------------------------------------------------------------------------
# The Raspberry Pi Pico project built with the real Pico SDK and pico-tflmicro (no RP2040
# emulator here: it is linked and sized, not run).

PICO_CHECKOUTS = ("PICO_SDK_PATH", "PICO_TFLMICRO_PATH")
RP2040_XIP_FLASH = (0x1000_0000, 0x1100_0000)
RP2040_STRIPED_SRAM = (0x2000_0000, 0x2004_0000)  # SRAM0-3; SCRATCH_X/Y (the stacks) lie above


def sections_in(elf: Path, window: tuple[int, int]) -> dict[str, int]:
    """Allocated sections (name -> bytes) whose address lies in `window`."""
    return {name: size for name, size, address in firmware_sizes.sections(elf)
            if window[0] <= address < window[1] and size > 0}


def flash_image_bytes(elf: Path, window: tuple[int, int]) -> int:
    """Bytes the image stores in `window`: the file size of each LOAD segment loaded there (the
    code, and .data's initial values, which the start-up code copies to RAM)."""
    listing = subprocess.run(["arm-none-eabi-readelf", "-lW", str(elf)], capture_output=True, text=True,
                             check=True).stdout
    total = 0
    for line in listing.splitlines():
        parts = line.split()  # LOAD offset virtual physical file-size memory-size flags align
        if parts and parts[0] == "LOAD" and window[0] <= int(parts[3], 16) < window[1]:
            total += int(parts[4], 16)
    return total


def test_pico_project_builds_with_the_pico_sdk_and_within_its_prediction(work):
    from tinyscale.project import render as fw  # noqa: PLC0415
    from tinyscale.project.board_glue import PICO_SDK_VERSION, PICO_TFLM  # noqa: PLC0415
    from tinyscale.project.context import FirmwareOptions  # noqa: PLC0415

    missing = [name for name in PICO_CHECKOUTS if not os.environ.get(name)]
    if missing:
        pytest.skip(f"set {' and '.join(missing)} to checkouts of pico-sdk {PICO_SDK_VERSION} (with "
                    f"lib/tinyusb) and pico-tflmicro {PICO_TFLM.commit[:7]}; PICOTOOL_DIR to an installed "
                    "picotool if the SDK is not to fetch one")
    target = load_target("rpi-pico")
    slot = work / "tiny-rpi-pico"
    options = FirmwareOptions(target=target, out_dir=slot / "project", name="app", force=True,
                              overwrite_edits=True, model_file="tiny.tflite")
    placement = fw.generate_firmware(TINY_MODEL.read_bytes(), options).context.placement
    configure = ["cmake", "-S", str(slot / "project"), "-B", str(slot / "build"),
                 *(f"-D{name}={os.environ[name]}" for name in PICO_CHECKOUTS)]
    if os.environ.get("PICOTOOL_DIR"):
        configure.append(f"-Dpicotool_DIR={os.environ['PICOTOOL_DIR']}")
    for command in (configure, ["cmake", "--build", str(slot / "build"), "-j2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    elf = slot / "build" / "app.elf"
    assert elf.is_file() and (slot / "build" / "app.uf2").is_file()
    flash = flash_image_bytes(elf, RP2040_XIP_FLASH)
    static_ram = sections_in(elf, RP2040_STRIPED_SRAM)
    print(f"\nrpi-pico tiny: flash {flash:,} B (predicted {placement.flash_needed_bytes:,}), "
          f"static RAM {sum(static_ram.values()):,} B (predicted {placement.sram_needed_bytes:,}): {static_ram}")
    # The prediction fit and build use is an upper bound of what links, and the target's
    # reserves cover the runtime: everything but the model, the self-test vectors and the arena.
    assert flash <= placement.flash_needed_bytes
    assert flash - placement.model_bytes - placement.selftest_flash_bytes <= target.flash.reserved_bytes
    assert ".bss" in static_ram and static_ram[".bss"] >= placement.device_arena_bytes  # the arena is static
    assert sum(static_ram.values()) <= placement.sram_needed_bytes
