"""What an optimized kernel library adds to the host-measured arena.

The host figure comes from TFLM's Python interpreter (x86-64, reference
kernels). On the device, optimized kernels request scratch buffers that the
reference kernels never ask for; only one operator runs at a time, so the plan
grows by at most the largest one. 32-bit pointers make TFLM's own structs
smaller on the MCU (about 2.7 KB less for person detection on an M4); no credit
is taken for that: it stays as slack.

One rule for everyone: the fitter, `simulate --target` and the firmware project
all size the device arena with :func:`device_arena_bytes`, so a model that `fit`
accepts is never refused by `firmware`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

from tinyscale.errors import ModelError

if TYPE_CHECKING:
    from tinyscale.graph.model import Graph

ARENA_ALIGNMENT = 16
ARENA_SLACK_BYTES = 256  # the planner's 16-byte tail alignment and rounding
# ESP-NN has SIMD kernels (with scratch) only for the ESP32-S3; on the ESP32
# and ESP32-C3 it runs its ANSI C kernels, whose get_*_scratch_size return 0.
ESP_NN_SIMD_CPUS = ("esp32s3",)
# Cores with the M-profile Vector Extension (Helium): CMSIS-NN compiles its MVE
# kernels there (ARM_MATH_MVEI, from __ARM_FEATURE_MVE), whose buffers differ.
MVE_CPUS = ("cortex-m55", "cortex-m85")
# CMSIS-NN's arm_nnsupportfunctions.h: channels per block of the MVE depthwise kernel.
CMSIS_NN_CH_IN_BLOCK_MVE = 124
MARGIN_NOTE = (
    "arena = align16(host minimum + margin); margin = largest optimized-kernel scratch buffer of any "
    "operator (CMSIS-NN: its DSP buffer-size formulas, its MVE ones on the M55/M85; ESP-NN on the S3: its esp32s3 get_*_scratch_size "
    "formulas; ESP-NN's ANSI kernels on ESP32/C3: none) + 256 B slack; the 32-bit MCU needs less than the "
    "64-bit host for TFLM's structs, kept as slack"
)

# (operator name, shape of input 0, shape of input 1 (weights))
OpShapes = tuple[str, Sequence[int], Sequence[int]]


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def cmsis_nn_scratch_bytes(op: OpShapes) -> int:
    """Scratch CMSIS-NN (DSP extension, M4/M7/M33) requests for one operator."""
    name, data, weights = op
    channels = data[-1] if data else 0
    if name == "CONV_2D" and len(weights) == 4:
        _, kh, kw, cin = weights
        if kh * kw == 1:
            return 2 * cin * 2  # 1x1 fast path (arm_convolve_1x1_s8_fast)
        return 2 * align_up(kh * kw * cin, 4) * 2  # im2col, two int16 columns
    if name == "DEPTHWISE_CONV_2D" and len(weights) == 4:
        return channels * weights[1] * weights[2] * 2  # arm_depthwise_conv_s8_opt
    if name == "AVERAGE_POOL_2D":
        return channels * 4  # int32 accumulators per channel
    if name == "FULLY_CONNECTED":
        return 2 * channels * 2  # batched inputs take the 1x1 conv path
    return 0


def cmsis_nn_mve_scratch_bytes(op: OpShapes) -> int:
    """Scratch CMSIS-NN's MVE (Helium) kernels request for one operator, an upper bound.

    From CMSIS-NN's *_get_buffer_size_mve (Source/*/arm_*_get_buffer_sizes_s8.c):
    convolutions take four im2col columns of whole 16-lane Q registers (the
    1-x-n and 1x1 paths need no more; 1x1 on gcc needs none, counted anyway),
    the depthwise kernel 4 * CH_IN_BLOCK_MVE * kh * kw bytes, or, with one input
    channel and several outputs, the regular convolution's buffer plus a
    transposed copy of the filter; fully connected int32 kernel sums per output
    channel (twice that when TFLM fakes per-channel quantization for the 1x1
    path); average pooling none.
    """
    name, data, weights = op
    if name == "CONV_2D" and len(weights) == 4:
        _, kh, kw, cin = weights
        return _mve_im2col_bytes(kh * kw * cin)
    if name == "DEPTHWISE_CONV_2D" and len(weights) == 4:
        _, kh, kw, cout = weights
        opt = 4 * CMSIS_NN_CH_IN_BLOCK_MVE * kh * kw
        if data and data[-1] == 1 and cout > 1:  # converted to a regular convolution
            return max(opt, _mve_im2col_bytes(kh * kw) + kh * kw * cout)
        return opt
    if name == "FULLY_CONNECTED" and len(weights) == 2:
        return 2 * weights[0] * 4
    return 0


def _mve_im2col_bytes(column_length: int) -> int:
    """arm_convolve_s8_get_buffer_size_mve: 4 columns, each in whole 16-byte lanes."""
    return 4 * align_up(column_length, 16)


def esp_nn_s3_scratch_bytes(op: OpShapes) -> int:
    """Scratch ESP-NN's ESP32-S3 kernels request (its esp32s3 get_*_scratch_size):
    int16 copies of the filter and of the (padded) input, plus alignment."""
    name, data, weights = op
    if len(data) != 4 or len(weights) != 4:
        return 0
    _, height, width, in_channels = data
    if name == "CONV_2D":
        out_channels, kh, kw, _ = weights
        return 2 * (kh * kw * in_channels * out_channels + height * width * in_channels + 8 * in_channels) + 32
    if name == "DEPTHWISE_CONV_2D":
        _, kh, kw, channels = weights
        padded = (height + kh - 1) * (width + kw - 1) * in_channels
        return 2 * (kh * kw * channels + padded) + 32
    return 0


def arena_margin_bytes(ops: Iterable[OpShapes], kernel_library: str, cpu: str = "") -> int:
    """Bytes to add to the host-measured minimal arena for `kernel_library` on `cpu`."""
    if kernel_library == "cmsis-nn" and cpu in MVE_CPUS:
        scratch = max((cmsis_nn_mve_scratch_bytes(op) for op in ops), default=0)
    elif kernel_library == "cmsis-nn":
        scratch = max((cmsis_nn_scratch_bytes(op) for op in ops), default=0)
    elif kernel_library == "esp-nn" and cpu in ESP_NN_SIMD_CPUS:
        scratch = max((esp_nn_s3_scratch_bytes(op) for op in ops), default=0)
    else:
        scratch = 0
    return scratch + ARENA_SLACK_BYTES


def split_margin(margin_bytes: int) -> tuple[int, int]:
    """(kernel scratch, fixed slack) of a margin from :func:`arena_margin_bytes`.

    The margin is scratch + ARENA_SLACK_BYTES; a margin below the slack (a caller
    that adds no kernel margin) is all slack, so reports never show negative scratch.
    """
    slack = min(margin_bytes, ARENA_SLACK_BYTES)
    return margin_bytes - slack, slack


def device_arena_bytes(host_arena_bytes: int, margin_bytes: int) -> int:
    """The arena the firmware allocates: host minimum + margin, 16-byte aligned."""
    return align_up(host_arena_bytes + margin_bytes, ARENA_ALIGNMENT)


# Code the patch pass's operators add to an image. The bundled boards' reserved
# runtime flash was measured with tinyscale's unpatched networks, which use none of
# them; a model that does gets this much more. Measured on the Cortex-M4
# (mps2-an386, arm-none-eabi-gcc -Os, benchmarks/patch_firmware.md): the three
# kernels together add 22,804 B with CMSIS-NN and 23,040 B with the reference
# kernels; the larger figure is used for every board (for the ESP32, nRF52840 and
# RP2040 toolchains it is an estimate from that measurement, not re-measured).
PATCH_KERNELS = frozenset({"STRIDED_SLICE", "PAD", "CONCATENATION"})
PATCH_KERNELS_FLASH_BYTES = 23_040


def extra_kernel_flash_bytes(ops: Iterable[OpShapes]) -> int:
    """Runtime flash a model needs beyond the board's reserve: the patch kernels when it uses any."""
    return PATCH_KERNELS_FLASH_BYTES if any(op[0] in PATCH_KERNELS for op in ops) else 0


def op_shapes(graph: "Graph") -> list[OpShapes]:
    """Each operator of a :class:`tinyscale.graph.model.Graph` (read from a
    flatbuffer or built from a spec) with the shapes of its inputs 0 and 1."""
    tensors = graph.tensors

    def dims(op, position: int) -> tuple[int, ...]:
        if len(op.inputs) <= position or not 0 <= op.inputs[position] < len(tensors):
            return ()
        return tuple(tensors[op.inputs[position]].shape)

    return [(op.kind, dims(op, 0), dims(op, 1)) for op in graph.operators]


def _cmsis_nn_gap(op, tensors) -> str | None:
    """Why CMSIS-NN cannot prepare `op` although the host's reference kernels run it, or None."""
    if op.name != "FULLY_CONNECTED" or len(op.inputs) < 2 or min(op.inputs[:2]) < 0:
        return None
    source, weights = tensors[op.inputs[0]], tensors[op.inputs[1]]
    # kernels/cmsis_nn/fully_connected.cc Prepare: "only Int8 is supported for per channel quantization".
    if len(weights.scale) > 1 and (source.dtype != "int8" or weights.dtype == "int4"):
        return (f"operator {op.index} FULLY_CONNECTED has per-channel {weights.dtype} weights on a {source.dtype} "
                "input, which CMSIS-NN's kernel refuses (per-channel needs int8 input and weights); re-convert "
                "with per-tensor dense weights (TFLiteConverter._experimental_disable_per_channel_quantization_"
                "for_dense_layers = True)")
    return None


# Kernel library -> check of one operator, for what it refuses that the host runs.
_KERNEL_GAPS = {"cmsis-nn": _cmsis_nn_gap}


def check_kernel_support(info, kernel_library: str, target_name: str) -> None:
    """ModelError when the target's kernel library cannot run an operator of `info` (a ModelInfo).

    The host measures and runs with TFLM's reference kernels, which accept
    more than the optimized ones: without this, such a model would simulate
    fine and fail on the device in AllocateTensors.
    """
    gap = _KERNEL_GAPS.get(kernel_library)
    for op in info.operators if gap else ():
        reason = gap(op, info.tensors)
        if reason:
            raise ModelError(f"{target_name} runs {kernel_library} kernels: {reason}")
