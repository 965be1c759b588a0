"""The device-arena rule shared by fit, scale/simulate and firmware."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tinyscale.boards.kernels import (
    ARENA_SLACK_BYTES,
    arena_margin_bytes,
    cmsis_nn_mve_scratch_bytes,
    cmsis_nn_scratch_bytes,
    cmsis_nn_scratch_requests,
    device_arena_bytes,
    esp_nn_s3_scratch_bytes,
    op_shapes,
    split_margin,
)
from tinyscale.boards.targets import load_target
from tinyscale.graph.estimate import tflite_graph
from tinyscale.graph.tflite_model import read_model
from tinyscale.network.arch import scale
from tinyscale.project import render
from tinyscale.search.fit import Memory, placement_for
from tinyscale.simulation.tflm import measure_arena
from tinyscale.training.convert import spec_to_tflite


def test_cmsis_nn_scratch_formulas():
    assert cmsis_nn_scratch_bytes(("CONV_2D", (1, 8, 8, 16), (32, 1, 1, 16))) == 64
    assert cmsis_nn_scratch_bytes(("CONV_2D", (1, 8, 8, 3), (16, 3, 3, 3))) == 2 * 28 * 2
    assert cmsis_nn_scratch_bytes(("DEPTHWISE_CONV_2D", (1, 8, 8, 48), (1, 5, 5, 48))) == 48 * 25 * 2
    assert cmsis_nn_scratch_bytes(("SOFTMAX", (1, 10), ())) == 0


def test_cmsis_nn_mve_scratch_formulas():
    # arm_convolve_s8_get_buffer_size_mve: 4 columns of ceil(kh*kw*cin / 16) 16-byte lanes.
    assert cmsis_nn_mve_scratch_bytes(("CONV_2D", (1, 8, 8, 3), (16, 3, 3, 3))) == 4 * 32
    assert cmsis_nn_mve_scratch_bytes(("CONV_2D", (1, 8, 8, 16), (32, 1, 1, 16))) == 4 * 16
    assert cmsis_nn_mve_scratch_bytes(("CONV_2D", (1, 8, 8, 17), (32, 1, 1, 17))) == 4 * 32
    # arm_depthwise_conv_s8_opt_get_buffer_size_mve: 4 * CH_IN_BLOCK_MVE (124) * kh * kw, any channel count.
    assert cmsis_nn_mve_scratch_bytes(("DEPTHWISE_CONV_2D", (1, 8, 8, 48), (1, 3, 3, 48))) == 4 * 124 * 9
    assert cmsis_nn_mve_scratch_bytes(("DEPTHWISE_CONV_2D", (1, 8, 8, 8), (1, 5, 5, 8))) == 4 * 124 * 25
    # One input channel, several outputs: converted to a convolution, its buffer + the filter copy.
    one_in = ("DEPTHWISE_CONV_2D", (1, 8, 8, 1), (1, 3, 3, 2000))
    assert cmsis_nn_mve_scratch_bytes(one_in) == 4 * 16 + 9 * 2000
    # arm_fully_connected_s8_get_buffer_size_mve: int32 kernel sums per output (x2 for TFLM's 1x1 path).
    assert cmsis_nn_mve_scratch_bytes(("FULLY_CONNECTED", (1, 64), (10, 64))) == 2 * 10 * 4
    # arm_avgpool_s8_get_buffer_size_mve: none (the DSP kernel takes int32 per channel).
    assert cmsis_nn_mve_scratch_bytes(("AVERAGE_POOL_2D", (1, 8, 8, 32), ())) == 0
    assert cmsis_nn_scratch_bytes(("AVERAGE_POOL_2D", (1, 8, 8, 32), ())) == 128


def test_the_m55_margin_uses_the_mve_formulas():
    ops = [("DEPTHWISE_CONV_2D", (1, 16, 16, 32), (1, 3, 3, 32)), ("CONV_2D", (1, 16, 16, 32), (64, 1, 1, 32))]
    assert arena_margin_bytes(ops, "cmsis-nn", "cortex-m55") == 4 * 124 * 9 + ARENA_SLACK_BYTES
    assert arena_margin_bytes(ops, "cmsis-nn", "cortex-m4") == 32 * 9 * 2 + ARENA_SLACK_BYTES
    assert arena_margin_bytes(ops, "reference", "cortex-m55") == ARENA_SLACK_BYTES
    m55 = load_target("mps3-an547")
    assert (m55.cpu, m55.kernel_library) == ("cortex-m55", "cmsis-nn")


def test_esp_nn_scratch_only_on_the_s3():
    ops = [("CONV_2D", (1, 8, 8, 16), (32, 3, 3, 16))]
    assert arena_margin_bytes(ops, "esp-nn", "esp32") == ARENA_SLACK_BYTES
    assert arena_margin_bytes(ops, "esp-nn", "esp32c3") == ARENA_SLACK_BYTES
    assert arena_margin_bytes(ops, "esp-nn", "esp32s3") == esp_nn_s3_scratch_bytes(ops[0]) + ARENA_SLACK_BYTES
    assert arena_margin_bytes(ops, "reference") == ARENA_SLACK_BYTES


def test_device_arena_is_aligned():
    assert device_arena_bytes(1000, 10) == 1024
    assert device_arena_bytes(1008, 8) == 1024  # already aligned sums stay put


@pytest.mark.slow
@pytest.mark.parametrize("target_name", ["nucleo-l476rg", "esp32", "esp32-s3", "mps2-an386", "mps3-an547"])
def test_fit_and_firmware_size_the_same_device_arena(target_name):
    target = load_target(target_name)
    spec = scale("tiny-se", 0).spec
    model = spec_to_tflite(spec)
    host_arena = measure_arena(model).arena_bytes
    info = read_model(model)
    # The analytic graph and the converted model give the operators the same shapes.
    assert op_shapes(tflite_graph(spec).graph) == op_shapes(info.graph)
    plan, firmware_placement = render.plan_arena(info, host_arena, target)
    fit_placement = placement_for(target, spec, Memory(len(model), host_arena))
    assert plan.arena_bytes == fit_placement.device_arena_bytes
    assert firmware_placement == fit_placement


@pytest.mark.parametrize("target_name", ["esp32", "esp32-s3"])  # host rule: no 32-bit model of ESP-NN builds
def test_placement_names_kernel_scratch_apart_from_slack(target_name):
    target = load_target(target_name)
    spec = scale("efficientnet-lite0", -8).spec
    margin = arena_margin_bytes(op_shapes(tflite_graph(spec).graph), target.kernel_library, target.cpu)
    scratch, slack = split_margin(margin)
    assert slack == ARENA_SLACK_BYTES and scratch + slack == margin
    placement = placement_for(target, spec, Memory(100_000, 50_001))
    assert placement.kernel_scratch_bytes == scratch
    # The slack is the fixed 256 B plus the 16-byte alignment of the device arena.
    assert ARENA_SLACK_BYTES <= placement.arena_slack_bytes < ARENA_SLACK_BYTES + 16
    assert placement.arena_bytes + placement.kernel_scratch_bytes + placement.arena_slack_bytes == (
        placement.device_arena_bytes
    )
    assert (scratch == 0) == (target_name == "esp32")  # ESP-NN's ANSI kernels on the plain ESP32: no scratch


def test_a_margin_below_the_slack_is_all_slack():
    assert split_margin(0) == (0, 0) and split_margin(100) == (0, 100)


@pytest.mark.parametrize("grid", [(1, 2), (2, 2), (3, 3)])
def test_a_patched_model_needs_the_kernel_scratch_of_the_unpatched_one(grid):
    from pathlib import Path

    from tinyscale.graph.flatbuffer import read_flatbuffer, write_flatbuffer
    from tinyscale.graph.patch import patch_model, split_candidates

    data = (Path(__file__).parent / "golden" / "tiny.tflite").read_bytes()
    original = read_flatbuffer(data)
    split = next(c for c in split_candidates(original) if "b1_dw_act" in c.name)  # stride-2 depthwise
    patched = read_model(write_flatbuffer(patch_model(original, split, grid)))
    ops = op_shapes(patched.graph)
    added = [op for op in ops if op[0] in ("STRIDED_SLICE", "PAD", "CONCATENATION")]
    assert {op[0] for op in added} == {"STRIDED_SLICE", "PAD", "CONCATENATION"}
    # CMSIS-NN requests no scratch for them: its PAD prepares with pad_common's
    # PadPrepare (one persistent OpData), STRIDED_SLICE and CONCATENATION are the
    # reference kernels; a tile's convolutions need what the full map's do (the
    # buffer sizes follow kernel and channels, not the spatial size).
    assert all(cmsis_nn_scratch_bytes(op) == 0 for op in added)
    unpatched = read_model(data)
    assert arena_margin_bytes(ops, "cmsis-nn") == arena_margin_bytes(op_shapes(unpatched.graph), "cmsis-nn")


def test_patch_kernels_add_their_measured_code_to_the_flash_need(synthetic_target):
    from tinyscale.boards.budget import place
    from tinyscale.boards.kernels import (
        PATCH_KERNELS_FLASH_BYTES,
        extra_kernel_flash_bytes,
    )

    plain = [("CONV_2D", (1, 8, 8, 3), (8, 3, 3, 3)), ("MEAN", (1, 4, 4, 8), ())]
    assert extra_kernel_flash_bytes(plain) == 0
    patched = [*plain, ("STRIDED_SLICE", (1, 8, 8, 3), ()), ("CONCATENATION", (1, 4, 8, 8), ())]
    assert extra_kernel_flash_bytes(patched) == PATCH_KERNELS_FLASH_BYTES  # once, however many of them
    target = synthetic_target(1_000_000, 100_000, flash_reserved=100_000)
    unpatched = place(target, 500_000, 10_000, 0, 100)
    with_kernels = place(target, 500_000, 10_000, 0, 100, extra_kernel_flash_bytes(patched))
    assert with_kernels.flash_needed_bytes - unpatched.flash_needed_bytes == PATCH_KERNELS_FLASH_BYTES
    assert with_kernels.to_dict()["extra_kernel_flash_bytes"] == PATCH_KERNELS_FLASH_BYTES


def test_cmsis_nn_scratch_requests_follow_each_cores_buffer_size_path():
    # CMSIS-NN 4ab83cc's *_get_buffer_size functions as TFLM's cmsis_nn kernels call them.
    graph = tflite_graph(scale("tiny", 0.0).spec).graph
    stem = graph.operators[0]  # 3x3 stride-2 CONV_2D on the 3-channel image: im2col
    depthwise = next(op for op in graph.operators if op.kind == "DEPTHWISE_CONV_2D")  # 3x3, SAME (pad 1)
    pointwise = next(op for op in graph.operators if op.kind == "CONV_2D" and graph.tensors[op.inputs[1]].shape[1] == 1)
    dense = next(op for op in graph.operators if op.kind == "FULLY_CONNECTED")
    classes = graph.tensors[dense.outputs[0]].shape[-1]
    assert stem.kind == "CONV_2D" and graph.tensors[stem.inputs[1]].shape[1:] == (3, 3, 3)
    expected = {
        # DSP: two int16 columns of align4(3*3*3) = 28; depthwise 3x3 pad<=1 has its own kernel.
        "cortex-m4": ([112], [], [], []),
        # Helium: four 16-lane columns (32 B each); depthwise 4 * 124 * 3 * 3; int32 kernel sums per class.
        "cortex-m55": ([128], [4 * 124 * 9], [], [4 * classes]),
        # Plain C (M0+): the same im2col as DSP, nothing else.
        "cortex-m0plus": ([112], [], [], []),
    }
    for cpu, (conv, dw, pw, fc) in expected.items():
        got = tuple(cmsis_nn_scratch_requests(graph, op, cpu) for op in (stem, depthwise, pointwise, dense))
        assert got == (conv, dw, pw, fc), cpu


def _lstm_graph(activation: str, state_dimension: int, input_dimension: int = 257):
    from tinyscale.graph.model import Graph, Operator, Tensor

    tensors = (Tensor("input", (1, 49, input_dimension), activation),
               Tensor("input_to_input_weights", (state_dimension, input_dimension), "int8", buffer=1),
               Tensor("output", (1, 49, state_dimension), activation))
    return Graph(tensors, (Operator("UNIDIRECTIONAL_SEQUENCE_LSTM", (0, 1), (2,)),), (0,), (2,))


def test_cmsis_nn_lstm_keeps_eight_kernel_sum_vectors_the_reference_kernel_does_not():
    from tinyscale.boards.kernels import cmsis_nn_persistent_bytes

    # TFLM's micro_speech_lstm example (state 80): 8 x 80 int32 sums. It ran out of arena on
    # the Cortex-M55 under QEMU by 1,248 B with the scratch margin alone; dtln (two LSTMs of
    # state 128: 8,192 B) on every core. Both run with this term added.
    assert cmsis_nn_persistent_bytes(_lstm_graph("int8", 80)) == 8 * 320
    assert cmsis_nn_persistent_bytes(_lstm_graph("int8", 81)) == 8 * 336  # each vector 16-aligned
    assert cmsis_nn_persistent_bytes(_lstm_graph("int16", 80)) == 8 * 640  # int64 sums for int16 activations
    graph = _lstm_graph("int8", 80)
    cifg = replace(graph, operators=(replace(graph.operators[0], inputs=(0, -1, 1)),))  # no input gate
    assert cmsis_nn_persistent_bytes(cifg) == 8 * 320
