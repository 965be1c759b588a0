"""What an optimized kernel library adds to the host-measured arena.

Cortex-M builds are replayed exactly (tinyscale.graph.estimate with the 32-bit
struct sizes, CMSIS-NN's scratch requests from :func:`cmsis_nn_scratch_requests`).
For the others (ESP-NN, the ESP32s' toolchains) the device arena is the host
figure from TFLM's Python interpreter (x86-64, reference kernels) plus a
margin: optimized kernels request scratch buffers that the reference kernels
never ask for; only one operator runs at a time, so the plan grows by at most
the largest one; 32-bit pointers make TFLM's own structs smaller on the MCU,
no credit is taken for that there: it stays as slack.

One rule for everyone: the fitter, `simulate --target` and the firmware project
all size the device arena with tinyscale.boards.budget.place_model, so a model that
`fit` accepts is never refused by `firmware`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

from tinyscale.errors import ModelError, NotModelledError

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
    "formulas; ESP-NN's ANSI kernels on ESP32/C3: none) + what CMSIS-NN's kernels keep beyond the reference "
    "kernels' persistent data (its LSTM's eight kernel-sum vectors) + 256 B slack; the 32-bit MCU needs less than the "
    "64-bit host for TFLM's structs, kept as slack (the rule where no 32-bit replay of the build exists)"
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


# CMSIS-NN's UNIDIRECTIONAL_SEQUENCE_LSTM Prepare (TFLM kernels/cmsis_nn/unidirectional_sequence_lstm.cc,
# CMSIS_NN_PortOpData) allocates eight persistent kernel-sum vectors of state_dimension
# biases (int32 for int8 activations, int64 for int16), each 16-aligned, that the reference
# kernel never allocates; its scratch buffers are the reference kernel's. Found under QEMU:
# TFLM's micro_speech_lstm and dtln examples ran out of arena with the scratch margin alone.
CMSIS_NN_LSTM_KERNEL_SUMS = 8


def cmsis_nn_persistent_bytes(graph: "Graph") -> int:
    """Persistent arena CMSIS-NN's kernels take beyond the reference kernels', over every operator."""
    total = 0
    for op in graph.operators:
        # Inputs 1-4 are the input-to-{input, forget, cell, output} weights, [state, input];
        # a CIFG LSTM has no input gate (input 1 is -1).
        weights = [t for t in op.inputs[1:5] if t >= 0] if op.kind == "UNIDIRECTIONAL_SEQUENCE_LSTM" else []
        if not weights or op.inputs[0] < 0:
            continue
        state_dimension = graph.tensors[weights[0]].shape[0]
        bias_bytes = 8 if graph.tensors[op.inputs[0]].dtype == "int16" else 4
        total += CMSIS_NN_LSTM_KERNEL_SUMS * align_up(state_dimension * bias_bytes, ARENA_ALIGNMENT)
    return total


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


# ---------------------------------------------------------------------------
# CMSIS-NN's scratch requests, exactly as TFLM's kernels/cmsis_nn/*.cc Prepare
# makes them with arm-none-eabi-gcc (the analytic device arena plans them like
# any other buffer). The *_get_buffer_size functions of CMSIS-NN 4ab83cc
# (Source/*/arm_*_get_buffer_sizes_s8.c) pick one of three paths at compile
# time: Helium (ARM_MATH_MVEI), the DSP extension (ARM_MATH_DSP), or pure C.

# The operators whose CMSIS-NN kernel requests scratch; the others request what the reference kernel does.
CMSIS_NN_KERNELS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D"})
# Cores whose -mcpu enables the DSP extension (__ARM_FEATURE_DSP -> ARM_MATH_DSP).
DSP_CPUS = ("cortex-m4", "cortex-m7", "cortex-m33", "cortex-m35p", "cortex-m55", "cortex-m85")
# arm_nnsupportfunctions.h, non-Arm-Compiler branch: the MVE depthwise kernel
# with one input channel runs as a convolution above this many output channels.
CMSIS_NN_DW_ONE_IN_CH_THRESHOLD = 1
_SAME_PADDING = 0  # tflite Padding.SAME


def _cmsis_nn_path(cpu: str) -> str:
    return "mve" if cpu in MVE_CPUS else "dsp" if cpu in DSP_CPUS else "c"


def _padding(padding: int, stride: int, dilation: int, in_size: int, filter_size: int) -> tuple[int, int]:
    """(output size, padding) as TFLM's ComputeOutSize / ComputePadding give them."""
    effective = (filter_size - 1) * dilation + 1
    if padding == _SAME_PADDING:
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size + stride - effective) // stride
    return out, max(0, ((out - 1) * stride + effective - in_size) // 2)


def _conv_geometry(options, data: Sequence[int], kh: int, kw: int) -> dict:
    padding = options.get("padding", _SAME_PADDING) if options else _SAME_PADDING
    stride_h, stride_w = (options.get("strideH", 1), options.get("strideW", 1)) if options else (1, 1)
    dil_h = options.get("dilationHFactor", 1) if options else 1
    dil_w = options.get("dilationWFactor", 1) if options else 1
    out_h, pad_h = _padding(padding, stride_h, dil_h, data[1], kh)
    out_w, pad_w = _padding(padding, stride_w, dil_w, data[2], kw)
    return {"stride_h": stride_h, "stride_w": stride_w, "dil_h": dil_h, "dil_w": dil_w,
            "pad_h": pad_h, "pad_w": pad_w, "out_h": out_h, "out_w": out_w}


def _conv_s8_buffer(path: str, cin: int, kh: int, kw: int) -> int:
    """arm_convolve_s8_get_buffer_size: im2col columns (four 16-lane ones on MVE, two int16 ones otherwise)."""
    if path == "mve":
        return _mve_im2col_bytes(cin * kh * kw)
    return 2 * align_up(kh * kw * cin, 4) * 2


def _conv_1_x_n_mve_buffer(g: dict, in_w: int, cin: int, kw: int) -> int:
    """arm_convolve_1_x_n_s8_get_buffer_size_mve."""
    total_pad = (g["out_w"] - 1) * g["stride_w"] + kw - in_w
    asym_pad = total_pad % 2 if total_pad >= 0 else -((-total_pad) % 2)  # C's remainder
    pad_x, stride_x, out_x = g["pad_w"], g["stride_w"], g["out_w"]
    right = max(1, (pad_x + asym_pad + stride_x - 1) // stride_x) if pad_x + asym_pad != 0 else 0
    left = max(1, (pad_x + stride_x - 1) // stride_x) if pad_x != 0 else 0
    if right + max(out_x - (right + left), 0) + left != out_x:
        return _mve_im2col_bytes(cin * kw)
    pad_left = pad_x * cin
    pad_right = right * cin if asym_pad else pad_left
    return max(kw * cin + pad_left, kw * cin - cin + pad_right)


def _conv_wrapper_buffer(path: str, g: dict, data: Sequence[int], kh: int, kw: int, filter_c: int) -> int:
    """arm_convolve_wrapper_s8_get_buffer_size (int8)."""
    cin = data[3]
    if (g["pad_w"] == 0 and g["pad_h"] == 0 and kh == 1 and kw == 1 and g["dil_w"] == 1 and g["dil_h"] == 1
            and cin == filter_c):
        return 0  # 1x1: the fast path's buffer exists only with the Arm Compiler, the other needs none
    if data[1] == 1 and g["dil_w"] == 1 and kh == 1 and (g["stride_w"] * cin) % 4 == 0 and cin == filter_c:
        return _conv_1_x_n_mve_buffer(g, data[2], cin, kw) if path == "mve" else _conv_s8_buffer(path, cin, kh, kw)
    return _conv_s8_buffer(path, cin, kh, kw)


def _depthwise_buffer(path: str, g: dict, data: Sequence[int], kh: int, kw: int, out_c: int) -> int:
    """arm_depthwise_conv_wrapper_s8_get_buffer_size (int8 filter)."""
    in_c = data[3]
    if path == "mve" and in_c == 1 and out_c > CMSIS_NN_DW_ONE_IN_CH_THRESHOLD:
        # Run as a convolution over a transposed copy of the filter.
        return _conv_wrapper_buffer(path, g, data, kh, kw, 1) + out_c * kh * kw
    if in_c == out_c and data[0] == 1 and g["dil_w"] == 1 and g["dil_h"] == 1:
        if path == "mve":
            return 4 * CMSIS_NN_CH_IN_BLOCK_MVE * kw * kh
        if kh == 3 and kw == 3 and g["pad_h"] <= 1 and g["pad_w"] <= 1:
            return 0  # arm_depthwise_conv_3x3_s8 needs none
        return in_c * kw * kh * 2 if path == "dsp" else 0
    return 0


def cmsis_nn_scratch_requests(graph: "Graph", op, cpu: str) -> list[int]:
    """Bytes of each RequestScratchBufferInArena call of CMSIS-NN's Prepare of `op` (int8) on `cpu`."""
    path = _cmsis_nn_path(cpu)
    tensors = graph.tensors
    data = tuple(tensors[op.inputs[0]].shape)
    weights = tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
    if weights is not None and weights.dtype != "int8" and op.kind != "AVERAGE_POOL_2D":
        raise NotModelledError(f"CMSIS-NN's scratch for {op.kind} with {weights.dtype} weights is not modelled")
    if op.kind == "CONV_2D":
        _, kh, kw, filter_c = weights.shape
        size = _conv_wrapper_buffer(path, _conv_geometry(op.options, data, kh, kw), data, kh, kw, filter_c)
        return [size] if size > 0 else []
    if op.kind == "DEPTHWISE_CONV_2D":
        _, kh, kw, out_c = weights.shape
        size = _depthwise_buffer(path, _conv_geometry(op.options, data, kh, kw), data, kh, kw, out_c)
        return [size] if size > 0 else []
    if op.kind == "FULLY_CONNECTED":
        output = tensors[op.outputs[0]].shape
        accum_depth, out_depth = weights.shape[-1], output[-1]
        requests = []
        if len(output) > 2 and accum_depth % 4 == 0:  # run as a 1x1 convolution
            if weights.quantization is None or len(weights.quantization.scale) <= 1:
                # per-tensor: TFLM fakes per-channel multipliers and shifts
                requests.append(out_depth * 4 * 2)
            return requests  # the 1x1 fast path's own buffer: Arm Compiler only
        return [out_depth * 4] if path == "mve" else []  # arm_fully_connected_s8: kernel sums on MVE
    if op.kind == "AVERAGE_POOL_2D":
        return [data[3] * 4] if path == "dsp" else []  # int32 accumulators per channel
    return []


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
