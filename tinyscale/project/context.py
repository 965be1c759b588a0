"""Everything a project's templates see, as frozen data: :class:`ProjectContext` and its parts.

Built and checked in Python (:mod:`tinyscale.project.render`, :mod:`tinyscale.project.board_glue`),
so the templates only print.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyscale.boards.budget import HOST_MARGIN_RULE, Placement
from tinyscale.boards.clocks import WAIT_POLLS, ClockPlan, ClockProgram
from tinyscale.boards.kernels import MVE_CPUS
from tinyscale.boards.targets import Target
from tinyscale.errors import TemplateError
from tinyscale.fsutil import TreeChanges
from tinyscale.graph.latency import LatencyEstimate
from tinyscale.graph.latency import describe as describe_latency


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


def _c_array_lines(items: list[str], per_line: int) -> tuple[str, ...]:
    return tuple(", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line))


# C identifiers: the project name becomes one in the generated sources.
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_C_KEYWORDS = frozenset(
    "alignas alignof and asm auto bool break case catch char class const constexpr continue default "
    "delete do double else enum explicit export extern false float for friend goto if inline int long "
    "main mutable namespace new noexcept not nullptr operator or private protected public register "
    "return short signed sizeof static struct switch template this throw true try typedef typename "
    "union unsigned using virtual void volatile while".split()
)


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
