"""Per-board glue of a project: STM32 console UARTs, clock trees, linker regions, ESP-IDF
partitions, Arduino and Pico SDK boards, each computed from the target file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from tinyscale.boards.chips import find_chip
from tinyscale.boards.clocks import (
    clock_program,
    clock_source,
    find_spec,
    plan_clock,
    uart_brr,
)
from tinyscale.boards.kernels import align_up
from tinyscale.boards.targets import MemoryRegion, Target
from tinyscale.errors import TemplateError
from tinyscale.project.context import (
    ArduinoContext,
    ArenaPlan,
    ClockSetup,
    CmakeArmContext,
    EspIdfContext,
    LinkerRegion,
    PicoSdkContext,
    PicoUart,
    PinMux,
    TflmLibrary,
    UartGlue,
    check_identifier,
)

log = logging.getLogger(__name__)

# How long the USB-console boards wait at boot for a host to open the port before they
# run the self-test anyway; they run it again whenever a terminal opens the port later.
HOST_WAIT_MS = 10_000


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
