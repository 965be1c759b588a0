"""Render a flashable firmware project for one quantized model and one target.

Data flows one way: model bytes + target -> checks (operators, fit) ->
host-measured arena and self-test vectors -> one :class:`ProjectContext` ->
Jinja templates (``templates/<build system>/`` at the project root,
``templates/common/`` and the shared ``firmware/`` sources in the source
directory) -> a temporary directory beside the output, renamed into place.
Nothing is written when any step fails.

Template rules (after copier): only ``*.jinja`` files are rendered (the
suffix is dropped), everything else is copied byte for byte; undefined
variables are errors (``StrictUndefined``); a template that renders to
whitespace only is not written, which is how optional files such as an
ESP-IDF ``partitions.csv`` appear only when needed; ``{{ ... }}`` in a file
or folder name is rendered too (an Arduino sketch folder and its ``.ino``
carry the project name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinyscale import __version__
from tinyscale.boards.budget import (
    DEVICE_MODEL_NOTE,
    DEVICE_MODEL_RULE,
    HOST_MARGIN_RULE,
    Placement,
    place_model,
)
from tinyscale.boards.chips import find_chip
from tinyscale.boards.clocks import (
    WAIT_POLLS,
    ClockPlan,
    ClockProgram,
    clock_program,
    clock_source,
    find_spec,
    plan_clock,
    uart_brr,
)
from tinyscale.boards.kernels import (
    MARGIN_NOTE,
    MVE_CPUS,
    align_up,
    check_kernel_support,
)
from tinyscale.boards.targets import MemoryRegion, Target
from tinyscale.errors import (
    DoesNotFitError,
    ModelError,
    OutputExistsError,
    TemplateError,
    UsageError,
)
from tinyscale.fsutil import (
    TreeChanges,
    check_output_dir,
    output_error,
    publish_tree,
    safe_relative,
    staging_directory,
)
from tinyscale.graph.latency import LatencyEstimate, predict_for_target
from tinyscale.graph.latency import describe as describe_latency
from tinyscale.graph.model import element_count
from tinyscale.graph.tflite_model import (
    IoQuantization,
    ModelInfo,
    check_full_integer,
    input_quantization,
    output_quantization,
    read_model,
)
from tinyscale.resources import data_dir

log = logging.getLogger(__name__)

TEMPLATE_BUILD_SYSTEMS = ("cmake-arm", "esp-idf", "arduino", "pico-sdk")
# Build systems whose projects can print a per-operator profile (`firmware --profile`).
PROFILE_BUILD_SYSTEMS = ("cmake-arm",)
# Where each build system keeps its sources (firmware/ and templates/common/ go there);
# {name} is the project name. An Arduino sketch folder is named like its .ino, and the
# builder compiles a sketch's src/ subfolder recursively (Arduino sketch specification).
SOURCE_DIRS = {"cmake-arm": "src", "esp-idf": "main", "arduino": "{name}/src", "pico-sdk": "src"}
# The Arduino builder compiles .c, .cpp and .S sketch files (the sketch specification;
# arduino-cli before 1.x and the 1.x IDE skip .cc), so the shared runner is copied as .cpp there.
SOURCE_SUFFIXES = {"arduino": {".cc": ".cpp"}}
# How long the USB-console boards wait at boot for a host to open the port before they
# run the self-test anyway; they run it again whenever a terminal opens the port later.
HOST_WAIT_MS = 10_000
MODEL_BYTES_PER_LINE = 12
SELFTEST_SEED = 0
# Model data is aligned like TFLM's own examples: flatbuffer tables may hold
# 8- and 16-byte scalars that are read in place.
MODEL_ALIGNMENT = 16
MANIFEST_FILE = "manifest.json"

# The arena margin (kernel-library scratch, 32-bit slack) is tinyscale.boards.kernels'
# rule, shared with the fitter so that fit and firmware agree to the byte.
# Measured on mps2-an386 under QEMU (tests/test_firmware_integration.py,
# benchmarks/firmware_sizes.py): the device's arena_used_bytes() was 17,716 B
# (reference) and 17,780 B (CMSIS-NN) against a host minimum of 19,624 B for
# the `tiny` base at phi=0, and 46,356 / 46,404 B against 49,088 B at phi=2.

# BuiltinOperator name -> TFLM MicroMutableOpResolver method (tflite-micro
# micro_mutable_op_resolver.h). Only builtins: custom operators are refused.
OP_RESOLVER_METHODS = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "DYNAMIC_UPDATE_SLICE": "AddDynamicUpdateSlice", "EMBEDDING_LOOKUP": "AddEmbeddingLookup",
    "ELU": "AddElu", "EQUAL": "AddEqual", "EXP": "AddExp", "EXPAND_DIMS": "AddExpandDims",
    "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv", "FLOOR_MOD": "AddFloorMod",
    "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather", "GATHER_ND": "AddGatherNd",
    "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual", "HARD_SWISH": "AddHardSwish",
    "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization", "L2_POOL_2D": "AddL2Pool2D",
    "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess", "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog",
    "LOGICAL_AND": "AddLogicalAnd", "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr",
    "LOGISTIC": "AddLogistic", "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum",
    "MAX_POOL_2D": "AddMaxPool2D", "MIRROR_PAD": "AddMirrorPad", "MEAN": "AddMean",
    "MINIMUM": "AddMinimum", "MUL": "AddMul", "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual",
    "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2", "PRELU": "AddPrelu",
    "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable", "REDUCE_ALL": "AddReduceAll",
    "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV",
    "SQUEEZE": "AddSqueeze", "SQRT": "AddSqrt", "SQUARE": "AddSquare",
    "SQUARED_DIFFERENCE": "AddSquaredDifference", "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub",
    "SUM": "AddSum", "SVDF": "AddSvdf", "TANH": "AddTanh", "TRANSPOSE_CONV": "AddTransposeConv",
    "TRANSPOSE": "AddTranspose", "UNPACK": "AddUnpack",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "VAR_HANDLE": "AddVarHandle",
    "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
}

_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_C_KEYWORDS = frozenset(
    "alignas alignof and asm auto bool break case catch char class const constexpr continue default "
    "delete do double else enum explicit export extern false float for friend goto if inline int long "
    "main mutable namespace new noexcept not nullptr operator or private protected public register "
    "return short signed sizeof static struct switch template this throw true try typedef typename "
    "union unsigned using virtual void volatile while".split()
)


# ---------------------------------------------------------------------------
# Context: everything the templates see, built and checked in Python


@dataclass(frozen=True)
class OpEntry:
    name: str  # BuiltinOperator name, e.g. CONV_2D
    method: str  # MicroMutableOpResolver method, e.g. AddConv2D


# Self-test value types: numpy dtype -> (C element type, TsType enumerator in selftest_data.h).
SELFTEST_TYPES = {"int8": ("int8_t", "TS_INT8"), "int16": ("int16_t", "TS_INT16"), "float32": ("float", "TS_FLOAT32")}
# A float32 output may differ from the host's by `tolerance` quantization steps of the
# int8/int16 tensor DEQUANTIZE reads, plus this fraction of a step for float rounding.
FLOAT_TOLERANCE_EPSILON_STEPS = 1e-3


@dataclass(frozen=True)
class TensorData:
    """A tensor embedded in the firmware (self-test input or expected output)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a SELFTEST_TYPES key
    values: tuple[int | float, ...]
    tolerance: float = 0.0  # expected outputs: largest |device - host| accepted per value

    @property
    def ctype(self) -> str:
        return SELFTEST_TYPES[self.dtype][0]

    @property
    def type_enum(self) -> str:
        return SELFTEST_TYPES[self.dtype][1]

    @property
    def tolerance_literal(self) -> str:
        return _c_float(self.tolerance)

    @property
    def lines(self) -> tuple[str, ...]:
        if self.dtype == "float32":
            return _c_array_lines([_c_float(v) for v in self.values], 8)
        return _c_array_lines([str(v) for v in self.values], 16)


def _c_float(value: float) -> str:
    """A C float literal that reads back as the same float32 (9 significant digits)."""
    text = f"{float(np.float32(value)):.9g}"
    return f"{text}f" if any(c in text for c in ".e") else f"{text}.0f"


@dataclass(frozen=True)
class ArenaPlan:
    measured_bytes: int  # host (x86-64, reference kernels) minimum
    margin_bytes: int
    arena_bytes: int  # what the firmware allocates
    region: str  # memory region the arena lives in
    region_kind: str  # sram or psram
    # The modelled 32-bit arena_used_bytes() the firmware prints (None: not modelled, host rule).
    device_arena_used_bytes: int | None = None
    rule: str = HOST_MARGIN_RULE  # or budget.DEVICE_MODEL_RULE


@dataclass(frozen=True)
class LinkerRegion:
    name: str  # as in the target file
    symbol: str  # MEMORY name in the linker script
    origin: int
    length: int


@dataclass(frozen=True)
class CmakeArmContext:
    cpu: str
    fpu: str | None
    regions: tuple[LinkerRegion, ...]
    data_region: str  # symbol of the region holding .data/.bss/heap/stack
    arena_region: str  # symbol of the region holding .tensor_arena
    flash_origin: int
    flash_length: int
    stack_bytes: int
    heap_bytes: int
    core_clock_hz: int  # what SysTick counts at once the clock tree is set up (the board's clock without one)
    reset_clock_hz: int  # what it counts at straight out of reset, and after a failed set-up
    console: str  # semihosting or uart
    uart: UartGlue | None
    clock: ClockSetup | None  # STM32 parts with tabulated clock trees; None: stay on the reset clock
    qemu_machine: str | None = None  # `qemu-system-arm -M` name for the FPGA images QEMU emulates

    @property
    def workaround_flags(self) -> tuple[str, ...]:
        """Compiler flags a core needs beyond -mcpu/-mfpu.

        On the MVE cores gcc 12 if-converts float conversions into IT blocks
        (`ittt ne; vcvtne.f32.s32`) that binutils' MVE-aware assembler rejects as a
        syntax error (TFLM's resize_nearest_neighbor.cc): no post-reload if-conversion there.
        """
        return ("-fno-if-conversion2",) if self.cpu in MVE_CPUS else ()

    @property
    def tflm_target_arch(self) -> str:
        """TARGET_ARCH for TFLM's create_tflm_tree.py (its cortex_m_generic names)."""
        # Only the M4 and M7 have "+fp" variants there; the tree's sources do not depend on it.
        return f"{self.cpu}+fp" if self.fpu and self.cpu in ("cortex-m4", "cortex-m7") else self.cpu


@dataclass(frozen=True)
class ClockSetup:
    """The computed clock tree (tinyscale.boards.clocks) and the register program that sets it."""

    plan: ClockPlan
    program: ClockProgram
    wait_polls: int = WAIT_POLLS


@dataclass(frozen=True)
class UartGlue:
    """Register-level setup of an STM32 USART wired to the ST-LINK virtual COM port."""

    family: str
    instance: str
    usart_base: int
    usart_enable_register: int
    usart_enable_bit: int
    gpio_enable_register: int
    pins: tuple[PinMux, ...]
    af: int
    baud: int
    brr_reset: int  # BRR from the reset clock (every prescaler /1, kernel clock = SYSCLK)
    layout: str  # "v1" (F4: SR/DR) or "v2" (ISR/TDR)
    kernel_clock_hz: int | None = None  # the USART's APB clock once the PLL runs
    brr_pll: int | None = None  # BRR from that clock; the firmware picks one of the two at run time

    @property
    def gpio_ports(self) -> tuple[tuple[int, str], ...]:
        """(index, letter) of each GPIO port the pins use, once each."""
        return tuple((i, "ABCDEFGHIJK"[i]) for i in sorted({pin.port_index for pin in self.pins}))


@dataclass(frozen=True)
class PinMux:
    name: str  # e.g. PD8
    port_index: int  # A=0
    port_base: int
    pin: int


@dataclass(frozen=True)
class EspIdfContext:
    idf_target: str
    flash_size_mb: int
    cpu_mhz: int
    arena_caps: str
    psram: bool
    console: str  # uart or usb-serial-jtag
    factory_partition_bytes: int | None  # None: the default 1 MB app partition is enough
    component_version: str


@dataclass(frozen=True)
class TflmLibrary:
    """A packaged TFLite Micro snapshot a build system's projects compile against."""

    name: str
    url: str
    commit: str  # the snapshot the template was checked against (README pins it)
    missing_ops: frozenset[str]  # builtins its MicroMutableOpResolver has no Add method for

    @property
    def short_commit(self) -> str:
        return self.commit[:7]


@dataclass(frozen=True)
class ArduinoContext:
    fqbn: str
    platform: str  # Boards Manager core
    sketch: str  # sketch folder and .ino name
    library: TflmLibrary
    baud: int
    host_wait_ms: int


@dataclass(frozen=True)
class PicoUart:
    index: int  # UART0 or UART1
    tx_pin: int  # GPIO number
    rx_pin: int
    baud: int


@dataclass(frozen=True)
class PicoSdkContext:
    board: str  # PICO_BOARD
    chip: str
    uart: PicoUart | None  # stdio on a UART too (USB CDC is always on)
    host_wait_ms: int
    library: TflmLibrary
    sdk_version: str  # the Pico SDK release the README clones


@dataclass(frozen=True)
class ProjectContext:
    """The one object a project's templates are rendered from."""

    project_name: str
    tinyscale_version: str
    target: Target
    build_system: str
    source_dir: str
    phi: float | None
    model_file: str
    model_sha256: str
    model_size_bytes: int
    model_alignment: int
    model_lines: tuple[str, ...]
    operators: tuple[OpEntry, ...]
    inputs: tuple[TensorData, ...]
    expected: tuple[TensorData, ...]
    tolerance: int
    arena: ArenaPlan
    placement: Placement
    overflow_allowed: bool  # generated although it does not fit (--allow-overflow)
    cmake_arm: CmakeArmContext | None = None
    esp_idf: EspIdfContext | None = None
    arduino: ArduinoContext | None = None
    pico_sdk: PicoSdkContext | None = None
    regenerate_command: str = ""
    profile: bool = False  # the self-test prints each operator's timer ticks (cmake-arm)
    latency: LatencyEstimate | None = None  # predicted at the target's clock; None without a cost table

    @property
    def predicted_latency_us(self) -> int | None:
        """Rendered into selftest_data.h, so the self-test prints it beside the measured time."""
        return None if self.latency is None else round(1000 * self.latency.latency_ms)

    @property
    def predicted_instructions(self) -> int | None:
        """Instructions QEMU's -icount would count, when the table was fitted to such counts."""
        if self.latency is None or self.latency.table.estimate:
            return None
        return round(self.latency.instructions)

    @property
    def latency_summary(self) -> str:
        """The README's line: the prediction and its cost table, or why there is none."""
        return describe_latency(self.latency, self.target)

    @property
    def predicted_flash_bytes(self) -> int:
        """Model + self-test vectors + the target's reserved runtime flash."""
        return self.placement.flash_needed_bytes

    @property
    def selftest_flash_bytes(self) -> int:
        return self.placement.selftest_flash_bytes

    @property
    def fits(self) -> bool:
        return self.placement.fits


@dataclass(frozen=True)
class FirmwareOptions:
    target: Target
    out_dir: Path
    name: str | None = None  # project name (C identifier); default from the model file name
    force: bool = False  # update a non-empty out_dir (only the files tinyscale generated there)
    allow_overflow: bool = False  # generate even when the model does not fit the target
    overwrite_edits: bool = False  # with force: also replace generated files the user has edited since
    phi: float | None = None  # recorded in the manifest when the model came from tinyscale
    tolerance: int | None = None  # self-test max |difference|; default per kernel library
    model_file: str = "model.tflite"
    profile: bool = False  # per-operator profile in the self-test (cmake-arm projects)


@dataclass(frozen=True)
class FirmwareResult:
    out_dir: Path
    context: ProjectContext
    changes: TreeChanges


# ---------------------------------------------------------------------------
# Checks


def check_identifier(value: str, what: str) -> str:
    if not _C_IDENTIFIER.match(value) or value in _C_KEYWORDS:
        raise TemplateError(f"{what} {value!r} is not a valid C identifier (letters, digits, _; not a keyword)")
    return value


def default_project_name(model_file: str) -> str:
    """A C identifier from the model's file name: `person-det.v2.tflite` -> `person_det_v2`."""
    stem = Path(model_file).name.split(".tflite")[0] or "model"
    name = re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_") or "model"
    if name[0].isdigit() or name in _C_KEYWORDS:
        name = f"app_{name}"
    return name


def check_build_system(target: Target) -> None:
    if target.build_system not in TEMPLATE_BUILD_SYSTEMS:
        raise TemplateError(
            f"target {target.name!r} uses build system {target.build_system!r}, which has no firmware "
            f"template yet (templates exist for {', '.join(TEMPLATE_BUILD_SYSTEMS)})"
        )


def resolver_ops(info: ModelInfo) -> tuple[OpEntry, ...]:
    """The model's distinct operators with their resolver methods; ModelError for any TFLM lacks."""
    entries = []
    for op in info.operators:
        if op.custom:
            raise ModelError(f"custom operator {op.name!r} has no TFLM MicroMutableOpResolver Add method")
        method = OP_RESOLVER_METHODS.get(op.name)
        if method is None:
            raise ModelError(f"operator {op.name} has no TFLM MicroMutableOpResolver Add method")
        entries.append(OpEntry(op.name, method))
    if not entries:
        raise ModelError("the model has no operators")
    return tuple(dict.fromkeys(entries))


def check_profile(profile: bool, build_system: str) -> None:
    """The per-operator profile needs the project's own TFLM timer hooks, which only cmake-arm renders."""
    if profile and build_system not in PROFILE_BUILD_SYSTEMS:
        raise UsageError(f"--profile is for {', '.join(PROFILE_BUILD_SYSTEMS)} projects; this target builds with {build_system}")


def check_library_ops(operators: tuple[OpEntry, ...], build_system: str) -> None:
    """ModelError for an operator the build system's packaged TFLM snapshot cannot register."""
    library = TFLM_LIBRARIES.get(build_system)
    if library is None:
        return  # a TFLM tree or component recent enough for every OP_RESOLVER_METHODS entry
    for op in operators:
        if op.name in library.missing_ops:
            raise ModelError(
                f"operator {op.name} is not in {library.name} ({library.url} at {library.short_commit}), "
                f"the TFLite Micro that {build_system} projects build with"
            )


def check_io(info: ModelInfo) -> None:
    # The self-test feeds one input and checks one output, as the host runner
    # (tinyscale.simulation.tflm.run_model) does; the model itself must pass simulate's rule.
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        raise ModelError(
            f"firmware needs a model with one input and one output, got {len(info.inputs)} and {len(info.outputs)}"
        )
    check_full_integer(info)


# ---------------------------------------------------------------------------
# Memory


def selftest_bytes(info: ModelInfo) -> int:
    """Flash taken by the embedded self-test input and expected output (in their own types)."""
    return sum(t.nbytes for t in (*info.input_tensors, *info.output_tensors))


def plan_arena(info: ModelInfo, measured_bytes: int, target: Target) -> tuple[ArenaPlan, Placement]:
    """The firmware's arena: budget.place_model's rule (fit's), from the file's graph."""
    placement = place_model(target, info.model, info.size_bytes, measured_bytes, selftest_bytes(info))
    arena = placement.device_arena_bytes
    region = next(r for r in target.memory if r.name == placement.arena_region)
    plan = ArenaPlan(measured_bytes, arena - measured_bytes, arena, region.name, region.kind,
                     placement.device_arena_used_bytes, placement.arena_rule)
    return plan, placement


def check_fit(placement: Placement, target: Target, allow_overflow: bool) -> None:
    """Refuse a model that exceeds the target, with the numbers (unless allowed).

    The placement is the fitter's (same arena margin, same self-test flash), so
    a model `fit` accepts is never refused here.
    """
    if placement.fits:
        return
    message = f"the model does not fit {target.name}: {placement.describe_shortfall()}"
    if not allow_overflow:
        raise DoesNotFitError(f"{message} (`tinyscale firmware --allow-overflow` generates the project anyway)")
    log.warning("%s; generating anyway (--allow-overflow)", message)


# ---------------------------------------------------------------------------
# Self-test vectors


def selftest_input(io: IoQuantization, seed: int = SELFTEST_SEED) -> np.ndarray:
    """A deterministic input covering the whole range of the graph's integer type (batch of one).

    For a float32 input, the same random integers dequantized: each value sits
    on a quantization step, so the device's QUANTIZE meets no rounding tie.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(max(d, 1) for d in io.tensor.shape)
    limits = np.iinfo(io.dtype)
    codes = rng.integers(limits.min, limits.max + 1, size=shape, dtype=io.dtype)
    if io.is_float:
        return ((codes.astype(np.float64) - io.zero_point) * io.scale).astype(np.float32)
    return codes


def host_expected_output(model: bytes, inputs: np.ndarray, arena_bytes: int) -> np.ndarray:
    """Output 0 of the host TFLM interpreter for the self-test input, flat, in the output's type."""
    from tinyscale.simulation import tflm  # noqa: PLC0415 - starts a TFLM worker process

    batch = inputs if inputs.shape[0] == 1 else inputs[np.newaxis]
    outputs = tflm.run_model(model, batch, arena_bytes=arena_bytes)
    return np.asarray(outputs).reshape(-1)


def output_tolerance(io: IoQuantization, steps: int) -> float:
    """Largest |device - host| per output value: quantization steps, in float units for a float output."""
    if io.is_float:
        return (steps + FLOAT_TOLERANCE_EPSILON_STEPS) * io.scale
    return float(steps)


def selftest_tensor(io: IoQuantization, values: np.ndarray, tolerance: float = 0.0) -> TensorData:
    """The embedded vector of `io`'s tensor: `values` in the tensor's own type, checked against its shape."""
    tensor = io.tensor
    flat = np.asarray(values, dtype=tensor.dtype).reshape(-1)
    count = element_count(tensor.shape)
    if flat.size != count:
        raise ModelError(f"self-test data has {flat.size} values, tensor {tensor.name!r} {list(tensor.shape)} {count}")
    if tensor.dtype == "float32" and not np.all(np.isfinite(flat)):
        raise ModelError(f"the host interpreter gave non-finite values for {tensor.name!r}; no self-test can compare them")
    python_values = tuple(float(v) for v in flat) if tensor.dtype == "float32" else tuple(int(v) for v in flat)
    return TensorData(tensor.name, tensor.shape, tensor.dtype, python_values, tolerance)


def measure_arena_bytes(model: bytes) -> int:
    from tinyscale.simulation import tflm  # noqa: PLC0415 - starts a TFLM worker process

    return tflm.measure_arena(model).arena_bytes


# ---------------------------------------------------------------------------
# Board specifics


def _c_array_lines(items: list[str], per_line: int) -> tuple[str, ...]:
    return tuple(", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line))


def model_lines(model: bytes) -> tuple[str, ...]:
    return _c_array_lines([f"0x{b:02x}" for b in model], MODEL_BYTES_PER_LINE)


@dataclass(frozen=True)
class _Stm32Family:
    reset_clock_hz: int  # core and bus clock straight out of reset (no PLL set up)
    rcc_base: int
    gpio_enable_offset: int  # RCC register whose bit n enables GPIO port n
    gpioa_base: int
    layout: str
    usarts: dict[str, tuple[int, int, int]]  # instance -> (base, RCC enable offset, bit)


# Reference manuals: RM0383 (F411), RM0385 (F746), RM0433 (H743), RM0351 (L476), RM0456 (U585).
# Addresses are the non-secure aliases; at reset every bus prescaler is 1 and
# each USART's kernel clock is its APB clock, so BRR = reset clock / baud.
_STM32_FAMILIES = {
    "F4": _Stm32Family(16_000_000, 0x40023800, 0x30, 0x40020000, "v1", {
        "USART1": (0x40011000, 0x44, 4), "USART2": (0x40004400, 0x40, 17), "USART6": (0x40011400, 0x44, 5)}),
    "F7": _Stm32Family(16_000_000, 0x40023800, 0x30, 0x40020000, "v2", {
        "USART1": (0x40011000, 0x44, 4), "USART2": (0x40004400, 0x40, 17), "USART3": (0x40004800, 0x40, 18),
        "USART6": (0x40011400, 0x44, 5)}),
    "H7": _Stm32Family(64_000_000, 0x58024400, 0xE0, 0x58020000, "v2", {
        "USART1": (0x40011000, 0xF0, 4), "USART2": (0x40004400, 0xE8, 17), "USART3": (0x40004800, 0xE8, 18)}),
    "L4": _Stm32Family(4_000_000, 0x40021000, 0x4C, 0x48000000, "v2", {
        "USART1": (0x40013800, 0x60, 14), "USART2": (0x40004400, 0x58, 17), "USART3": (0x40004800, 0x58, 18)}),
    "U5": _Stm32Family(4_000_000, 0x46020C00, 0x8C, 0x42020000, "v2", {
        "USART1": (0x40013800, 0xA4, 14), "USART2": (0x40004400, 0x9C, 17), "USART3": (0x40004800, 0x9C, 18)}),
}
_GPIO_PORT_STRIDE = 0x400


def _chip_family(target: Target) -> str | None:
    """The family of the target's `mcu` (the schema requires it wherever glue depends on it)."""
    chip = find_chip(target.mcu) if target.mcu else None
    return chip.family if chip else None


def stm32_family(target: Target) -> str:
    family = (_chip_family(target) or "").removeprefix("STM32")
    if family not in _STM32_FAMILIES:
        raise TemplateError(
            f"target {target.name!r}: UART console glue exists for STM32 families "
            f"{', '.join(_STM32_FAMILIES)}; mcu {target.mcu!r} is none of them"
        )
    return family


def _pin(name: str | None, family: _Stm32Family, target: Target) -> PinMux:
    match = re.fullmatch(r"P([A-K])(\d{1,2})", name or "")
    if match is None or int(match.group(2)) > 15:
        raise TemplateError(f"target {target.name!r}: console pin {name!r} is not an STM32 pin like PA2")
    port = ord(match.group(1)) - ord("A")
    return PinMux(name, port, family.gpioa_base + port * _GPIO_PORT_STRIDE, int(match.group(2)))


DEFAULT_BAUD = 115200


def _console_kind(target: Target, default: str) -> str:
    """The target's console kind, or the build system's usual one when the file names none."""
    return target.console.kind if target.console else default


def _console_baud(target: Target) -> int:
    return (target.console.baud if target.console else None) or DEFAULT_BAUD


def clock_setup(target: Target) -> ClockSetup | None:
    """The clock tree for the target's `clock_hz`, or None for a part whose manual is not tabulated."""
    spec = find_spec(target.mcu)
    if spec is None:
        log.warning("target %s: no clock-tree data for mcu %s; the firmware stays on its reset clock",
                    target.name, target.mcu)
        return None
    plan = plan_clock(spec, target.clock_hz, clock_source(target.hse_bypass_hz), target.hse_bypass_hz)
    return ClockSetup(plan, clock_program(plan))


def uart_glue(target: Target, clock: ClockSetup | None = None) -> UartGlue:
    console = target.console
    family_name = stm32_family(target)
    family = _STM32_FAMILIES[family_name]
    if console is None or console.instance not in family.usarts or console.af is None:
        raise TemplateError(
            f"target {target.name!r}: a UART console needs instance (one of {', '.join(family.usarts)}), "
            "tx_pin, rx_pin and af"
        )
    baud = _console_baud(target)
    base, enable_offset, enable_bit = family.usarts[console.instance]
    pins = tuple(_pin(p, family, target) for p in (console.tx_pin, console.rx_pin))
    return UartGlue(
        family=family_name,
        instance=console.instance,
        usart_base=base,
        usart_enable_register=family.rcc_base + enable_offset,
        usart_enable_bit=enable_bit,
        gpio_enable_register=family.rcc_base + family.gpio_enable_offset,
        pins=pins,
        af=console.af,
        baud=baud,
        brr_reset=uart_brr(family.reset_clock_hz, baud),
        layout=family.layout,
        kernel_clock_hz=clock.plan.usart_clock_hz(console.instance) if clock else None,
        brr_pll=uart_brr(clock.plan.usart_clock_hz(console.instance), baud) if clock else None,
    )


def _linker_symbol(region: MemoryRegion) -> str:
    return check_identifier(region.name, "memory region name").upper()


# Stack and newlib heap of the bare-metal projects: they live in the first
# memory region (the target files count them in its reserved_bytes).
STACK_BYTES = 16 * 1024
HEAP_BYTES = 4 * 1024


def cmake_arm_context(target: Target, arena: ArenaPlan) -> CmakeArmContext:
    regions = tuple(LinkerRegion(r.name, _linker_symbol(r), r.origin or 0, r.size_bytes) for r in target.memory)
    symbols = {r.name: r.symbol for r in regions}
    console_kind = _console_kind(target, "semihosting")
    if console_kind not in ("semihosting", "uart"):
        raise TemplateError(f"target {target.name!r}: cmake-arm projects support uart or semihosting consoles")
    # Semihosting boards (QEMU's mps2-an386) run at their fixed clock: no clock tree to set up.
    clock = clock_setup(target) if console_kind == "uart" else None
    uart = uart_glue(target, clock) if console_kind == "uart" else None
    reset_clock_hz = _STM32_FAMILIES[uart.family].reset_clock_hz if uart else target.clock_hz
    return CmakeArmContext(
        cpu=target.cpu,
        fpu=target.fpu,
        regions=regions,
        data_region=regions[0].symbol,
        arena_region=symbols[arena.region],
        flash_origin=target.flash.origin or 0,
        flash_length=target.flash.budget_bytes,
        stack_bytes=STACK_BYTES,
        heap_bytes=HEAP_BYTES,
        core_clock_hz=clock.plan.systick_hz if clock else reset_clock_hz,
        reset_clock_hz=reset_clock_hz,
        console=console_kind,
        uart=uart,
        clock=clock,
        qemu_machine=qemu_machine(target),
    )


def qemu_machine(target: Target) -> str | None:
    """The QEMU board that runs `target`'s image: its chip's (the MPS2/MPS3 FPGA images), else None."""
    chip = find_chip(target.mcu) if target.mcu else None
    return chip.qemu_machine if chip else None


ESP_TFLITE_MICRO_VERSION = "~1.4.0"
ESP_DEFAULT_APP_PARTITION_BYTES = 1024 * 1024
ESP_APP_OFFSET = 0x10000  # where the factory app starts in IDF's default tables
ESP_PARTITION_ALIGNMENT = 0x10000
# Extra room in a custom app partition so a slightly larger rebuild still fits.
ESP_APP_HEADROOM = 1 / 8
_ESP_CPU_MHZ = {"esp32": 240, "esp32s2": 240, "esp32s3": 240, "esp32c3": 160, "esp32c6": 160}


def factory_partition_bytes(target: Target, image_bytes: int) -> int | None:
    """Size of a custom factory app partition, or None when IDF's default 1 MB app fits."""
    if image_bytes <= ESP_DEFAULT_APP_PARTITION_BYTES:
        return None
    wanted = align_up(int(image_bytes * (1 + ESP_APP_HEADROOM)), ESP_PARTITION_ALIGNMENT)
    room = (target.flash.size_bytes - ESP_APP_OFFSET) // ESP_PARTITION_ALIGNMENT * ESP_PARTITION_ALIGNMENT
    return min(wanted, room)


def esp_idf_context(target: Target, arena: ArenaPlan, image_bytes: int) -> EspIdfContext:
    psram = arena.region_kind == "psram"
    console_kind = _console_kind(target, "uart")
    mhz = min(target.clock_hz // 1_000_000, _ESP_CPU_MHZ.get(target.cpu, 160))
    return EspIdfContext(
        idf_target=target.cpu,
        flash_size_mb=max(1, target.flash.size_bytes // (1024 * 1024)),
        cpu_mhz=mhz,
        arena_caps="MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT" if psram else "MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT",
        psram=psram,
        console=console_kind,
        factory_partition_bytes=factory_partition_bytes(target, image_bytes),
        component_version=ESP_TFLITE_MICRO_VERSION,
    )


# TFLite Micro snapshots the Arduino and Pico SDK projects build with. missing_ops:
# the OP_RESOLVER_METHODS builtins whose Add method their micro_mutable_op_resolver.h lacks.
ARDUINO_TFLM = TflmLibrary(
    name="Arduino_TensorFlowLite",
    url="https://github.com/tensorflow/tflite-micro-arduino-examples",
    commit="7948b85e020470a30a83bf00e10fc43b486bfcba",  # 2023-12; TFLM synced 2023-02-27
    missing_ops=frozenset({"BATCH_MATMUL", "DYNAMIC_UPDATE_SLICE", "EMBEDDING_LOOKUP", "REDUCE_ALL",
                           "REDUCE_MIN", "REVERSE_V2"}),
)
PICO_TFLM = TflmLibrary(
    name="pico-tflmicro",
    url="https://github.com/raspberrypi/pico-tflmicro",
    commit="dfea53b977f131dc50d7060568ad4fd355d4d71e",  # 2024-12-26, TFLM of that month
    missing_ops=frozenset({"DYNAMIC_UPDATE_SLICE", "REDUCE_ALL", "REDUCE_MIN", "REVERSE_V2"}),
)
TFLM_LIBRARIES = {"arduino": ARDUINO_TFLM, "pico-sdk": PICO_TFLM}

# Boards the Arduino template builds for: Arduino_TensorFlowLite compiles only for the
# Nano 33 BLE (its src/peripherals/peripherals.h stops with #error "unsupported board"
# elsewhere). Chip family of the target's mcu -> (FQBN, Boards Manager core).
_ARDUINO_BOARDS = {"nRF52840": ("arduino:mbed_nano:nano33ble", "arduino:mbed_nano")}


def arduino_context(target: Target, project_name: str) -> ArduinoContext:
    board = _ARDUINO_BOARDS.get(_chip_family(target))
    if board is None:
        raise TemplateError(
            f"target {target.name!r}: the Arduino template builds for the Nano 33 BLE (nRF52840) only, "
            f"the one board {ARDUINO_TFLM.name} supports; mcu {target.mcu!r} is not its chip"
        )
    console_kind = _console_kind(target, "usb-cdc")
    if console_kind != "usb-cdc":
        raise TemplateError(f"target {target.name!r}: Arduino projects print to Serial, a usb-cdc console")
    fqbn, platform = board
    return ArduinoContext(
        fqbn=fqbn,
        platform=platform,
        sketch=project_name,
        library=ARDUINO_TFLM,
        baud=_console_baud(target),
        host_wait_ms=HOST_WAIT_MS,
    )


PICO_SDK_VERSION = "2.1.1"
# Chip family of the target's mcu -> PICO_BOARD. The RP2350 would be "pico2" once checked.
_PICO_BOARDS = {"RP2040": "pico"}
# RP2040 datasheet, 2.19.2 "Function Select" (F2 = UART): the GPIOs that carry each
# UART's TX and RX.
_RP2040_UART_PINS = {0: ((0, 12, 16, 28), (1, 13, 17, 29)), 1: ((4, 8, 20, 24), (5, 9, 21, 25))}


def _gpio(name: str | None) -> int | None:
    match = re.fullmatch(r"GP(?:IO)?(\d{1,2})", name or "")
    return int(match.group(1)) if match else None


def pico_uart(target: Target) -> PicoUart:
    console = target.console
    match = re.fullmatch(r"UART([01])", console.instance or "")
    index = int(match.group(1)) if match else None
    tx, rx = _gpio(console.tx_pin), _gpio(console.rx_pin)
    if index is None or tx not in _RP2040_UART_PINS[index][0] or rx not in _RP2040_UART_PINS[index][1]:
        raise TemplateError(
            f"target {target.name!r}: a UART console needs instance UART0 or UART1 with its RP2040 pins "
            f"(UART0 TX GP0/12/16/28, RX GP1/13/17/29; UART1 TX GP4/8/20/24, RX GP5/9/21/25), "
            f"got {console.instance!r} {console.tx_pin!r}/{console.rx_pin!r}"
        )
    return PicoUart(index, tx, rx, _console_baud(target))


def pico_sdk_context(target: Target) -> PicoSdkContext:
    chip = _chip_family(target)
    if chip not in _PICO_BOARDS:
        raise TemplateError(
            f"target {target.name!r}: Pico SDK projects are made for mcu {', '.join(_PICO_BOARDS)}, "
            f"not {target.mcu!r}"
        )
    console_kind = _console_kind(target, "usb-cdc")
    if console_kind not in ("uart", "usb-cdc"):
        raise TemplateError(f"target {target.name!r}: Pico SDK projects support uart or usb-cdc consoles")
    return PicoSdkContext(
        board=_PICO_BOARDS[chip],
        chip=chip,
        uart=pico_uart(target) if console_kind == "uart" else None,
        host_wait_ms=HOST_WAIT_MS,
        library=PICO_TFLM,
        sdk_version=PICO_SDK_VERSION,
    )


# ---------------------------------------------------------------------------
# Building the context


def default_tolerance(kernel_library: str) -> int:
    # Reference kernels run the same integer code as the host interpreter: bit-exact.
    # Optimized kernels may round a requantization differently by one step.
    return 0 if kernel_library == "reference" else 1


def build_context(model: bytes, options: FirmwareOptions, *, measured_arena_bytes: int | None = None,
                  expected: np.ndarray | None = None) -> ProjectContext:
    """Check everything and compute the context; measures on the host unless given the figures."""
    target = options.target
    check_build_system(target)
    check_profile(options.profile, target.build_system)
    info = read_model(model)
    operators = resolver_ops(info)
    check_library_ops(operators, target.build_system)
    check_io(info)
    check_kernel_support(info, target.kernel_library, target.name)
    name = check_identifier(options.name or default_project_name(options.model_file), "project name")
    # Board glue that needs no measurement is checked first, so a bad target fails fast.
    arduino = arduino_context(target, name) if target.build_system == "arduino" else None
    pico_sdk = pico_sdk_context(target) if target.build_system == "pico-sdk" else None

    measured = measured_arena_bytes if measured_arena_bytes is not None else measure_arena_bytes(model)
    arena, placement = plan_arena(info, measured, target)
    image_bytes = placement.flash_needed_bytes
    fits = placement.fits
    check_fit(placement, target, options.allow_overflow)

    input_io, output_io = input_quantization(info), output_quantization(info)
    inputs = selftest_input(input_io)
    if expected is None:
        expected = host_expected_output(model, inputs, arena.measured_bytes)  # the host build needs its own minimum
    tolerance = options.tolerance if options.tolerance is not None else default_tolerance(target.kernel_library)

    return ProjectContext(
        project_name=name,
        tinyscale_version=__version__,
        target=target,
        build_system=target.build_system,
        source_dir=SOURCE_DIRS[target.build_system].format(name=name),
        phi=options.phi,
        model_file=Path(options.model_file).name,
        model_sha256=hashlib.sha256(model).hexdigest(),
        model_size_bytes=len(model),
        model_alignment=MODEL_ALIGNMENT,
        model_lines=model_lines(model),
        operators=operators,
        inputs=(selftest_tensor(input_io, inputs),),
        expected=(selftest_tensor(output_io, expected, output_tolerance(output_io, tolerance)),),
        tolerance=tolerance,
        arena=arena,
        placement=placement,
        overflow_allowed=options.allow_overflow and not fits,
        cmake_arm=cmake_arm_context(target, arena) if target.build_system == "cmake-arm" else None,
        esp_idf=esp_idf_context(target, arena, image_bytes) if target.build_system == "esp-idf" else None,
        arduino=arduino,
        pico_sdk=pico_sdk,
        regenerate_command=_regenerate_command(options, name),
        profile=options.profile,
        latency=predict_for_target(info.model, target),
    )


def check_board_glue(target: Target) -> None:
    """Make the board glue no model affects (console, pins, chip, board package), or raise
    what `firmware` would: `build` calls it before spending its training time."""
    check_build_system(target)
    region = target.arena_regions[0]
    placeholder = ArenaPlan(0, 0, 0, region.name, region.kind)  # sizes do not matter to the glue
    contexts = {
        "cmake-arm": lambda: cmake_arm_context(target, placeholder),
        "esp-idf": lambda: esp_idf_context(target, placeholder, 0),
        "arduino": lambda: arduino_context(target, "model"),
        "pico-sdk": lambda: pico_sdk_context(target),
    }
    contexts[target.build_system]()


def _regenerate_command(options: FirmwareOptions, name: str) -> str:
    target = options.target
    bundled = target.path is None or target.path.resolve().parent == data_dir("targets").resolve()
    # A user's target file is named, not located: absolute paths would make output machine-dependent.
    parts = ["tinyscale firmware", Path(options.model_file).name,
             "--target", target.name if bundled else target.path.name, "--name", name, "-o", "DIR"]
    if options.tolerance is not None:
        parts += ["--tolerance", str(options.tolerance)]
    if options.phi is not None:
        parts += ["--phi", repr(options.phi)]
    if options.allow_overflow:
        parts.append("--allow-overflow")
    if options.profile:
        parts.append("--profile")
    return " ".join(parts)


def manifest_data(context: ProjectContext, files: list[str], hashes: dict[str, str]) -> dict:
    """The project's manifest: enough to regenerate it, audit its sizing, and know its files.

    `files` (every generated path, manifest.json included) is what a later
    `--force` may replace or remove; anything else in the folder is the user's.
    `hashes` (every generated file but the manifest itself) tells a later
    `--force` which of them the user has edited since, so their edits are not
    overwritten silently.
    """
    return {
        "tinyscale_version": context.tinyscale_version,
        "target": context.target.name,
        "build_system": context.build_system,
        "kernel_library": context.target.kernel_library,
        "phi": context.phi,
        "model": {"file": context.model_file, "sha256": context.model_sha256, "size_bytes": context.model_size_bytes},
        "options": {"name": context.project_name, "tolerance": context.tolerance, "allow_overflow": context.overflow_allowed,
                    "selftest_seed": SELFTEST_SEED, "profile": context.profile},
        "arena": {**asdict(context.arena),
                  "margin_rule": DEVICE_MODEL_NOTE if context.arena.rule == DEVICE_MODEL_RULE else MARGIN_NOTE},
        "predicted": {
            "flash_needed_bytes": context.predicted_flash_bytes,
            "selftest_flash_bytes": context.selftest_flash_bytes,
            "flash_budget_bytes": context.placement.flash_budget_bytes,
            "sram_needed_bytes": context.placement.sram_needed_bytes,
            "sram_budget_bytes": context.placement.sram_budget_bytes,
            "fits": context.fits,
            **latency_manifest(context.latency),
        },
        "operators": [op.name for op in context.operators],
        "regenerate": context.regenerate_command,
        "files": sorted(files),
        "file_sha256": dict(sorted(hashes.items())),
    }


def latency_manifest(latency: LatencyEstimate | None) -> dict:
    """The manifest's predicted latency (null without a cost table for the core)."""
    if latency is None:
        return {"latency_ms": None}
    return {
        "latency_ms": round(latency.latency_ms, 4),
        "latency_cycles": round(latency.cycles),
        "latency_clock_hz": latency.clock_hz,
        "latency_cost_table": f"{latency.table.cpu}-{latency.table.kernel_library}",
        "latency_estimate": latency.table.estimate,
        "latency_unmodelled_ops": list(latency.unmodelled),
    }


def manifest(context: ProjectContext, files: list[str], hashes: dict[str, str]) -> str:
    return json.dumps(manifest_data(context, files, hashes), indent=2, sort_keys=True) + "\n"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# Rendering


def templates_root() -> Path:
    return data_dir("templates")


def firmware_sources_dir() -> Path:
    return data_dir("firmware")


def _environment(root: Path):
    import jinja2  # noqa: PLC0415 - only rendering needs it

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["hex"] = lambda value, width=8: f"0x{value:0{width}X}"
    return env


def _files(directory: Path) -> list[Path]:
    # Dotfiles (.gitkeep) and caches are repository plumbing, not project files.
    return sorted(
        p for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(directory).parts)
    )


def _output_path(env, relative: Path, context: ProjectContext, suffixes: dict[str, str]) -> Path:
    """A template's path in the project: `{{ ... }}` in a file or folder name is rendered
    (an Arduino sketch is named after the project), then the suffix is mapped."""
    parts = []
    for part in relative.parts:
        if "{{" in part:
            part = env.from_string(part).render(ctx=context)
            if part in ("", ".", "..") or "/" in part or "\\" in part:
                raise TemplateError(f"template path {relative} renders to an unusable name {part!r}")
        parts.append(part)
    out = Path(*parts)
    if out.suffix == ".jinja":
        out = out.with_suffix("")
    return out.with_suffix(suffixes.get(out.suffix, out.suffix))


def render_tree(source: Path, destination: Path, context: ProjectContext,
                suffixes: dict[str, str] | None = None) -> list[str]:
    """Render `source` into `destination`; returns the written paths relative to `destination`.

    `suffixes` maps a file suffix to the one it gets in the project (".cc" -> ".cpp").
    """
    import jinja2  # noqa: PLC0415

    env = _environment(source)
    written = []
    for path in _files(source):
        relative = path.relative_to(source)
        try:
            out = destination / _output_path(env, relative, context, suffixes or {})
            text = env.get_template(relative.as_posix()).render(ctx=context) if path.suffix == ".jinja" else None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {relative}: {exc}") from None
        if text is not None and not text.strip():
            continue  # optional file not needed for this project
        out.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            shutil.copyfile(path, out)
        else:
            out.write_text(text, encoding="utf-8")
        written.append(out.relative_to(destination).as_posix())
    return written


def render_project(context: ProjectContext, destination: Path) -> list[str]:
    """Write the whole project into the (empty) staging directory `destination`."""
    templates = templates_root()
    system_dir = templates / context.build_system
    if not system_dir.is_dir():
        raise TemplateError(f"templates for {context.build_system} are missing ({system_dir})")
    sources = destination / context.source_dir
    suffixes = SOURCE_SUFFIXES.get(context.build_system)
    written = render_tree(system_dir, destination, context)
    for shared in (templates / "common", firmware_sources_dir()):
        written += [f"{context.source_dir}/{p}" for p in render_tree(shared, sources, context, suffixes)]
    hashes = {name: _sha256_file(destination / name) for name in written}
    written = sorted([*written, MANIFEST_FILE])
    (destination / MANIFEST_FILE).write_text(manifest(context, written, hashes), encoding="utf-8")
    return written


def _previous_manifest(out_dir: Path) -> dict:
    try:
        data = json.loads((Path(out_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def generated_files(out_dir: Path) -> set[str]:
    """The files the project's previous manifest.json says tinyscale generated (none if unknown).

    Without that list (no project yet, an older tinyscale, a foreign file) nothing
    is removed: only the files the new render writes are replaced.
    """
    recorded = _previous_manifest(out_dir).get("files", [])
    return safe_relative(recorded) if isinstance(recorded, list) else set()


def edited_files(out_dir: Path) -> list[str]:
    """Generated files whose content differs from what the previous manifest recorded: the user's edits."""
    recorded = _previous_manifest(out_dir).get("file_sha256")
    if not isinstance(recorded, dict):
        return []  # an older manifest: nothing to compare with
    edited = []
    for name in sorted(safe_relative(recorded)):
        path = Path(out_dir) / name
        if path.is_file() and not path.is_symlink() and _sha256_file(path) != recorded[name]:
            edited.append(name)
    return edited


def check_edits(out_dir: Path, overwrite_edits: bool) -> None:
    """Refuse to regenerate over generated files the user has edited, unless told to (exit 4)."""
    edited = [] if overwrite_edits else edited_files(out_dir)
    if not edited:
        return
    if len(edited) == 1:
        what = f"{Path(out_dir) / edited[0]} was edited since tinyscale generated it"
    else:
        names = ", ".join(edited[:3]) + (f" and {len(edited) - 3} more" if len(edited) > 3 else "")
        what = f"{len(edited)} generated files in {out_dir} were edited since tinyscale generated them ({names})"
    raise OutputExistsError(
        f"{what}; regenerating would lose the edits: move them into a file of your own (kept on regeneration) "
        "or pass --overwrite-edits"
    )


def write_project(context: ProjectContext, out_dir: Path, force: bool, overwrite_edits: bool = False) -> TreeChanges:
    """Render the project beside (new folder) or inside (existing folder) `out_dir`, then publish it.

    Rendering finishes before anything in `out_dir` changes; an existing project
    is updated file by file and keeps the user's own files (see publish_tree).
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)
    check_edits(out_dir, overwrite_edits)
    previous = generated_files(out_dir)
    staged = staging_directory(out_dir)
    try:
        render_project(context, staged)
        return publish_tree(staged, out_dir, previous)
    except BaseException as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if isinstance(exc, OSError):
            raise output_error(out_dir, exc) from None
        raise


def generate_firmware(model: bytes, options: FirmwareOptions) -> FirmwareResult:
    """Check, measure and render: the whole `tinyscale firmware` command as a function."""
    check_build_system(options.target)
    check_output_dir(Path(options.out_dir), options.force)  # fail before the slow measurements
    check_edits(Path(options.out_dir), options.overwrite_edits)
    context = build_context(model, options)
    changes = write_project(context, Path(options.out_dir), options.force, options.overwrite_edits)
    log.info("wrote %d files to %s", len(changes.written), options.out_dir)
    return FirmwareResult(Path(options.out_dir), context, changes)
