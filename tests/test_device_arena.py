"""The 32-bit firmware arena: the analytic replay against QEMU's arena_used_bytes(), and one rule for fit and firmware.

tests/data/device_arena_measurements.json holds what the firmware printed as
`ARENA used` under QEMU on every emulated core with CMSIS-NN and reference
kernels (benchmarks/device_arena.py --measure wrote it). The models are rebuilt
here without TensorFlow (device_arena.analytic_graph): the golden file,
spec-built graphs, the golden file patched by the pure patch pass, and TFLM's
person_detect when TFLM_SOURCE names a checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from tinyscale.boards.budget import DEVICE_MODEL_RULE, HOST_MARGIN_RULE
from tinyscale.boards.targets import load_target
from tinyscale.errors import NotModelledError
from tinyscale.graph import estimate
from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
from tinyscale.graph.tflite_model import read_model
from tinyscale.network.arch import scale
from tinyscale.project import render as fw
from tinyscale.search import fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import device_arena  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "tiny.tflite"
MEASUREMENTS = json.loads(device_arena.DATA_FILE.read_text())["measurements"]


def _model(model_id: str):
    row = next(row for row in MEASUREMENTS if row["model"] == model_id)
    source = os.environ.get("TFLM_SOURCE")
    graph = device_arena.analytic_graph(row, Path(source) if source else None)
    if graph is None:
        pytest.skip("set TFLM_SOURCE to a tflite-micro checkout (person_detect.tflite)")
    return graph


MODEL_IDS = sorted({row["model"] for row in MEASUREMENTS})


def test_measurements_cover_every_emulated_core_with_both_kernel_libraries():
    cells = {(row["machine"], row["kernels"]) for row in MEASUREMENTS}
    assert cells == {(m, k) for m in ("mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547")
                     for k in ("cmsis-nn", "reference")}
    assert all(row["selftest"] == "PASS" for row in MEASUREMENTS)
    golden = hashlib.sha256(GOLDEN.read_bytes()).hexdigest()
    assert {row["model_sha256"] for row in MEASUREMENTS if row["model"] == "tiny"} == {golden}


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_32_bit_replay_predicts_qemu_arena_used_bytes_to_the_byte(model_id):
    model = _model(model_id)
    rows = [row for row in MEASUREMENTS if row["model"] == model_id]
    predicted = {(row["core"], row["kernels"]): estimate.device_arena_used_bytes(model, row["kernels"], row["core"])
                 for row in rows}
    measured = {(row["core"], row["kernels"]): row["arena_used_bytes"] for row in rows}
    assert predicted == measured


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_modelled_minimum_was_enough_and_16_bytes_less_was_not(model_id):
    # The firmware was sized from the modelled minimum (16-aligned) and passed its self-test;
    # rebuilt 16 B smaller, AllocateTensors refused it.
    model = _model(model_id)
    for row in (r for r in MEASUREMENTS if r["model"] == model_id and "arena_16_less_fails" in r):
        runtime = estimate.device_runtime(row["kernels"], row["core"])
        assert row["arena_bytes"] == -(-estimate.arena_plan(model, runtime).arena_bytes // 16) * 16
        assert row["arena_16_less_fails"]


def test_32_bit_structs_are_smaller_but_cmsis_nn_mve_scratch_can_outweigh_them():
    model = read_flatbuffer(GOLDEN.read_bytes())
    host = estimate.arena_used_bytes(model)
    assert estimate.device_arena_used_bytes(model, "reference", "cortex-m4") < host
    # Helium's im2col and depthwise buffers (4 * 124 * kh * kw) exceed the DSP ones.
    assert estimate.device_arena_used_bytes(model, "cmsis-nn", "cortex-m55") > \
        estimate.device_arena_used_bytes(model, "cmsis-nn", "cortex-m4")


def test_builds_without_32_bit_structs_are_not_modelled():
    model = read_flatbuffer(GOLDEN.read_bytes())
    for kernels, cpu in (("esp-nn", "esp32s3"), ("cmsis-nn", "esp32"), ("ethos-u", "cortex-m55")):
        with pytest.raises(NotModelledError):
            estimate.device_arena_used_bytes(model, kernels, cpu)


@pytest.mark.parametrize("target_name", ["mps2-an386", "mps3-an547", "nucleo-l476rg", "rpi-pico", "nano33ble", "esp32"])
def test_fit_and_firmware_size_the_arena_by_one_rule(target_name):
    target = load_target(target_name)
    spec = scale("tiny", 0.0).spec
    data = write_flatbuffer(estimate.tflite_graph(spec))
    memory = fit.analytic_memory(spec)
    fitted = fit.placement_for(target, spec, memory)
    _, firmware = fw.plan_arena(read_model(data), memory.arena_bytes, target)
    fields = ("device_arena_bytes", "device_arena_used_bytes", "device_arena_minimum_bytes", "arena_rule",
              "sram_needed_bytes", "arena_region", "kernel_scratch_bytes", "arena_slack_bytes")
    assert {f: getattr(fitted, f) for f in fields} == {f: getattr(firmware, f) for f in fields}
    # The modelled build: a cmake-arm project against a create_tflm_tree.py tree. The Pico's and the
    # Nano's libraries vendor other TFLM snapshots, the ESP32s run ESP-NN: the host rule.
    expected_rule = DEVICE_MODEL_RULE if target.build_system == "cmake-arm" else HOST_MARGIN_RULE
    assert fitted.arena_rule == expected_rule
    assert (fitted.device_arena_used_bytes is None) == (expected_rule == HOST_MARGIN_RULE)
