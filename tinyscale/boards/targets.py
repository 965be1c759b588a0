"""Boards as schema-checked TOML files with every size in bytes.

A missing size never defaults: a tool that decides whether a model fits must
not guess. Unknown keys are rejected so a typo cannot silently drop a limit.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyscale.boards.chips import (
    BUILD_SYSTEM_CPUS,
    CPU_FPUS,
    KERNEL_LIBRARY_CPUS,
    chip_families,
    find_chip,
)
from tinyscale.boards.clocks import check_target_clock
from tinyscale.errors import TargetError, TinyscaleError
from tinyscale.resources import data_dir

KERNEL_LIBRARIES = ("cmsis-nn", "esp-nn", "reference")
BUILD_SYSTEMS = ("esp-idf", "cmake-arm", "arduino", "pico-sdk")
CONSOLE_KINDS = ("uart", "semihosting", "usb-serial-jtag", "usb-cdc")
MEMORY_KINDS = ("sram", "psram")

# field name -> (type, required)
_TOP_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "schema_version": (int, True),
    "name": (str, True),
    "board": (str, True),
    "core": (str, True),
    "mcu": (str, False),  # the chip's part number, e.g. STM32L476RG, nRF52840, RP2040, ESP32-S3
    "cpu": (str, True),  # compiler's -mcpu / IDF target, e.g. cortex-m7, esp32s3
    "fpu": (str, False),  # gcc -mfpu value (fpv4-sp-d16, fpv5-d16, ...); absent: soft float
    "clock_hz": (int, True),
    # STM32: the external clock on OSC_IN in HSE bypass mode (e.g. the ST-LINK's 8 MHz MCO, where
    # the board's user manual documents it) for the PLL to run from; absent: the internal HSI
    "hse_bypass_hz": (int, False),
    "kernel_library": (str, True),
    "build_system": (str, True),
    "url": (str, False),
    "notes": (str, False),
    "flash": (dict, True),
    "memory": (list, True),
    "console": (dict, False),
}
_FLASH_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "size_bytes": (int, True),  # the whole flash device
    "budget_bytes": (int, True),  # what the application image may occupy (e.g. app partition)
    "reserved_bytes": (int, True),  # framework + TFLM runtime + glue, excluding the model
    "origin": (int, False),  # address of the flash the image links at (cmake-arm)
}
_MEMORY_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True),
    "kind": (str, True),
    "size_bytes": (int, True),
    "reserved_bytes": (int, True),  # taken by stack, heap, drivers, framework
    "arena": (bool, True),  # may this region hold the tensor arena?
    "origin": (int, False),
}
_CONSOLE_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "kind": (str, True),  # uart, semihosting, usb-serial-jtag, ...
    "instance": (str, False),  # e.g. USART3
    "baud": (int, False),
    "tx_pin": (str, False),
    "rx_pin": (str, False),
    "af": (int, False),  # GPIO alternate-function number of the UART pins (STM32)
}

SCHEMA_VERSION = 1
ADDRESS_SPACE_BYTES = 1 << 32  # every supported core has 32-bit addresses


@dataclass(frozen=True)
class FlashSpec:
    size_bytes: int
    budget_bytes: int
    reserved_bytes: int
    origin: int | None = None

    @property
    def model_budget_bytes(self) -> int:
        """Bytes left for the model once framework and runtime are placed."""
        return self.budget_bytes - self.reserved_bytes


@dataclass(frozen=True)
class MemoryRegion:
    name: str
    kind: str
    size_bytes: int
    reserved_bytes: int
    arena: bool
    origin: int | None = None

    @property
    def arena_budget_bytes(self) -> int:
        return self.size_bytes - self.reserved_bytes


@dataclass(frozen=True)
class ConsoleSpec:
    kind: str
    instance: str | None = None
    baud: int | None = None
    tx_pin: str | None = None
    rx_pin: str | None = None
    af: int | None = None


@dataclass(frozen=True)
class Target:
    name: str
    board: str
    core: str
    cpu: str
    clock_hz: int
    kernel_library: str
    build_system: str
    flash: FlashSpec
    memory: tuple[MemoryRegion, ...]
    console: ConsoleSpec | None = None
    fpu: str | None = None
    mcu: str | None = None
    url: str | None = None
    notes: str | None = None
    path: Path | None = None
    hse_bypass_hz: int | None = None

    @property
    def arena_regions(self) -> tuple[MemoryRegion, ...]:
        """Regions that may hold the arena, in order of preference (file order)."""
        return tuple(region for region in self.memory if region.arena)

    @property
    def total_ram_bytes(self) -> int:
        return sum(region.size_bytes for region in self.memory)


def check_fields(
    where: str, table: dict[str, Any], fields: dict[str, tuple[type | tuple[type, ...], bool]],
    error: type[TinyscaleError] = TargetError,
) -> None:
    """Unknown keys, missing required ones and wrong types, as one `error` line naming the key.

    Shared by every schema-checked data file (boards, latency cost tables, coefficients files).
    """
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(fields)}")
    for key, (kind, required) in fields.items():
        if key not in table:
            if required:
                raise error(f"{where}: missing required key {key!r}")
            continue
        value = table[key]
        # bool is an int subclass: keep sizes and coefficients from accepting true/false.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise error(f"{where}: {key!r} must be {expected}, got {value!r}")
        if kind is int and key != "schema_version" and value < 0:
            raise error(f"{where}: {key!r} must not be negative, got {value}")


def _choice(where: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TargetError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")


# Rendered into `//` and `#` comments of the generated sources: a line break there would
# turn the rest of the label into code. Only `notes` (never rendered) may span lines.
_ONE_LINE_KEYS = ("name", "board", "core", "mcu", "cpu", "fpu", "url")
STM32_AF_MAX = 15  # GPIOx_AFRL/AFRH hold a 4-bit alternate-function number per pin


def _check_one_line(source: str, data: dict[str, Any]) -> None:
    for key in _ONE_LINE_KEYS:
        value = data.get(key)
        if value is not None and (not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise TargetError(f"{source}: {key!r} must be one non-empty line of text, got {value!r}")


def _check_cpu(source: str, data: dict[str, Any]) -> None:
    """cpu and fpu are compiler flags: a value the toolchain or kernels lack fails here, not in gcc."""
    cpu, fpu, build_system = data["cpu"], data.get("fpu"), data["build_system"]
    _choice(source, "cpu", cpu, BUILD_SYSTEM_CPUS[build_system])
    kernel_cpus = KERNEL_LIBRARY_CPUS.get(data["kernel_library"])
    if kernel_cpus is not None and cpu not in kernel_cpus:
        raise TargetError(f"{source}: kernel_library {data['kernel_library']!r} has no kernels for cpu {cpu!r}")
    if fpu is not None:
        fpus = CPU_FPUS.get(cpu, ())
        if not fpus:
            raise TargetError(f"{source}: fpu {fpu!r} given, but cpu {cpu!r} has no FPU option; remove fpu")
        _choice(source, "fpu", fpu, fpus)


_MCU_EXAMPLES = {"arduino": "nRF52840", "pico-sdk": "RP2040", "cmake-arm": "STM32L476RG", "esp-idf": "ESP32-S3"}


def _mcu_needed(data: dict[str, Any]) -> bool:
    """Build systems whose project depends on the chip, not just the core: the Arduino core
    and the Pico SDK board are chosen by chip, and UART glue is per STM32 family."""
    console = data.get("console")
    uart = isinstance(console, dict) and console.get("kind") == "uart"
    return data["build_system"] in ("arduino", "pico-sdk") or (data["build_system"] == "cmake-arm" and uart)


def _check_mcu(source: str, data: dict[str, Any]) -> None:
    mcu = data.get("mcu")
    if mcu is None:
        if _mcu_needed(data):
            raise TargetError(
                f"{source}: missing required key 'mcu': {data['build_system']} projects for this board are made "
                f"per chip; name its part number, e.g. mcu = \"{_MCU_EXAMPLES[data['build_system']]}\" "
                f"(known: {', '.join(chip_families())})"
            )
        return
    chip = find_chip(mcu)
    if chip is None:
        if _mcu_needed(data):
            raise TargetError(
                f"{source}: mcu {mcu!r} is not a chip tinyscale knows ({', '.join(chip_families())}), and "
                f"{data['build_system']} projects for this board need one"
            )
        return  # e.g. a semihosting Cortex-M board: nothing depends on the chip
    if data["cpu"] != chip.cpu:
        raise TargetError(f"{source}: mcu {mcu!r} ({chip.family}) has a {chip.cpu} core, but cpu is {data['cpu']!r}")
    fpu = data.get("fpu")
    if fpu is not None and fpu not in chip.fpus:
        has = f"an FPU taking {', '.join(chip.fpus)}" if chip.fpus else "no FPU"
        raise TargetError(f"{source}: mcu {mcu!r} ({chip.family}) has {has}, but fpu is {fpu!r}")


def _check_clock(source: str, data: dict[str, Any]) -> None:
    """The clock tree the cmake-arm firmware sets up must exist for the chip (tinyscale.boards.clocks)."""
    try:
        check_target_clock(data.get("mcu"), data["clock_hz"], data.get("hse_bypass_hz"))
    except TargetError as exc:
        raise TargetError(f"{source}: mcu {data.get('mcu')!r}: {exc}") from None


def _span(origin: int, size: int, where: str, key: str) -> tuple[int, int, str]:
    if origin + size > ADDRESS_SPACE_BYTES:
        raise TargetError(
            f"{where}: origin 0x{origin:X} + {key} {size:,} ends at 0x{origin + size:X}, past the 4 GB (32-bit) "
            "address space"
        )
    return origin, origin + size, where


def _check_address_map(source: str, flash: FlashSpec, regions: list[MemoryRegion]) -> None:
    """Every placed range fits in 32 bits and none overlaps another (the flash image included)."""
    spans = [_span(region.origin, region.size_bytes, f"{source} [[memory]] {region.name!r}", "size_bytes")
             for region in regions if region.origin is not None]
    if flash.origin is not None:
        # The image links at the origin and may take budget_bytes (e.g. after a bootloader).
        spans.append(_span(flash.origin, flash.budget_bytes, f"{source} [flash]", "budget_bytes"))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise TargetError(f"{first} overlaps {second.removeprefix(source + ' ')} (0x{start:X}-0x{end:X})")


def _parse_flash(source: str, table: dict[str, Any]) -> FlashSpec:
    check_fields(f"{source} [flash]", table, _FLASH_FIELDS)
    flash = FlashSpec(**table)
    if flash.budget_bytes > flash.size_bytes:
        raise TargetError(f"{source} [flash]: budget_bytes exceeds size_bytes")
    if flash.reserved_bytes >= flash.budget_bytes:
        raise TargetError(f"{source} [flash]: reserved_bytes leaves no room for a model")
    return flash


def _parse_regions(source: str, tables: list[Any]) -> list[MemoryRegion]:
    regions = []
    for index, table in enumerate(tables):
        where = f"{source} [[memory]] #{index + 1}"
        if not isinstance(table, dict):
            raise TargetError(f"{where}: must be a table")
        check_fields(where, table, _MEMORY_FIELDS)
        _choice(where, "kind", table["kind"], MEMORY_KINDS)
        region = MemoryRegion(**table)
        if region.size_bytes == 0:
            raise TargetError(f"{where}: size_bytes must be positive")
        if region.reserved_bytes > region.size_bytes:
            raise TargetError(f"{where}: reserved_bytes exceeds size_bytes")
        regions.append(region)
    names = [region.name for region in regions]
    if len(set(names)) != len(names):
        raise TargetError(f"{source}: memory region names must be unique")
    if not any(region.arena for region in regions):
        raise TargetError(f"{source}: no memory region has arena = true")
    return regions


def _parse_console(source: str, table: dict[str, Any]) -> ConsoleSpec:
    where = f"{source} [console]"
    check_fields(where, table, _CONSOLE_FIELDS)
    console = ConsoleSpec(**table)
    _choice(where, "kind", console.kind, CONSOLE_KINDS)
    if console.baud is not None and console.baud == 0:
        raise TargetError(f"{where}: 'baud' must be positive")
    if console.af is not None and console.af > STM32_AF_MAX:
        raise TargetError(f"{where}: 'af' must be an alternate-function number 0-{STM32_AF_MAX}, got {console.af}")
    return console


def parse_target(data: dict[str, Any], source: str = "<target>", path: Path | None = None) -> Target:
    """Validate a decoded target table and build a :class:`Target`."""
    check_fields(source, data, _TOP_FIELDS)
    _check_one_line(source, data)
    if data["schema_version"] != SCHEMA_VERSION:
        raise TargetError(f"{source}: schema_version {data['schema_version']} unsupported (want {SCHEMA_VERSION})")
    _choice(source, "kernel_library", data["kernel_library"], KERNEL_LIBRARIES)
    _choice(source, "build_system", data["build_system"], BUILD_SYSTEMS)
    if data["clock_hz"] <= 0:
        raise TargetError(f"{source}: clock_hz must be positive")
    _check_cpu(source, data)

    flash = _parse_flash(source, data["flash"])
    regions = _parse_regions(source, data["memory"])
    console = _parse_console(source, data["console"]) if "console" in data else None

    if data["build_system"] == "cmake-arm":
        if flash.origin is None or any(region.origin is None for region in regions):
            raise TargetError(f"{source}: cmake-arm targets need an origin for flash and every memory region")
    _check_address_map(source, flash, regions)
    _check_mcu(source, data)
    _check_clock(source, data)

    return Target(
        name=data["name"],
        board=data["board"],
        core=data["core"],
        cpu=data["cpu"],
        clock_hz=data["clock_hz"],
        kernel_library=data["kernel_library"],
        build_system=data["build_system"],
        flash=flash,
        memory=tuple(regions),
        console=console,
        fpu=data.get("fpu"),
        mcu=data.get("mcu"),
        url=data.get("url"),
        notes=data.get("notes"),
        path=path,
        hse_bypass_hz=data.get("hse_bypass_hz"),
    )


def read_toml_file(path: Path, what: str = "target file", error: type[TinyscaleError] = TargetError) -> dict[str, Any]:
    """A data file's TOML table; `error` (one line naming the file) when unreadable or not TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: invalid TOML: {exc}") from None


def load_target_file(path: Path) -> Target:
    return parse_target(read_toml_file(path), source=str(path), path=path)


def targets_dir() -> Path:
    return data_dir("targets")


def bundled_target_names() -> list[str]:
    return sorted(path.stem for path in targets_dir().glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """A bundled target by name (any case), or a user's own file by path (anything ending .toml)."""
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return load_target_file(Path(name_or_path))
    name = bundled_target_name(name_or_path)
    path = targets_dir() / f"{name}.toml"
    target = load_target_file(path)
    if target.name != name:
        raise TargetError(f"{path}: name {target.name!r} does not match the file name")
    return target


def bundled_target_name(requested: str) -> str:
    """The bundled name `requested` means: `ESP32` is `esp32`; one suggestion for a typo."""
    names = bundled_target_names()
    by_folded = {name.casefold(): name for name in names}
    folded = requested.casefold()
    if folded in by_folded:
        return by_folded[folded]
    # Compare folded names so `ESP23` is as close to `esp32` as `esp23` is.
    close = difflib.get_close_matches(folded, list(by_folded), n=1, cutoff=0.5)
    hint = f"; did you mean {by_folded[close[0]]}?" if close else f"; known targets: {', '.join(names)}"
    raise TargetError(f"unknown target {requested!r}{hint}")


def load_all_targets() -> list[Target]:
    return [load_target(name) for name in bundled_target_names()]
