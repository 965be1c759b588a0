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

from tinyscale.errors import TargetError
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
    "cpu": (str, True),  # compiler's -mcpu / IDF target, e.g. cortex-m7, esp32s3
    "fpu": (str, False),  # gcc -mfpu value (fpv4-sp-d16, fpv5-d16, ...); absent: soft float
    "clock_hz": (int, True),
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
    url: str | None = None
    notes: str | None = None
    path: Path | None = None

    @property
    def arena_regions(self) -> tuple[MemoryRegion, ...]:
        """Regions that may hold the arena, in order of preference (file order)."""
        return tuple(region for region in self.memory if region.arena)

    @property
    def total_ram_bytes(self) -> int:
        return sum(region.size_bytes for region in self.memory)


def _check_fields(
    where: str, table: dict[str, Any], fields: dict[str, tuple[type | tuple[type, ...], bool]]
) -> None:
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise TargetError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(fields)}")
    for key, (kind, required) in fields.items():
        if key not in table:
            if required:
                raise TargetError(f"{where}: missing required key {key!r}")
            continue
        value = table[key]
        # bool is an int subclass: keep sizes from accepting true/false.
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise TargetError(f"{where}: {key!r} must be {expected}, got {value!r}")
        if kind is int and key != "schema_version" and value < 0:
            raise TargetError(f"{where}: {key!r} must not be negative, got {value}")


def _choice(where: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TargetError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")


def parse_target(data: dict[str, Any], source: str = "<target>", path: Path | None = None) -> Target:
    """Validate a decoded target table and build a :class:`Target`."""
    _check_fields(source, data, _TOP_FIELDS)
    if data["schema_version"] != SCHEMA_VERSION:
        raise TargetError(f"{source}: schema_version {data['schema_version']} unsupported (want {SCHEMA_VERSION})")
    _choice(source, "kernel_library", data["kernel_library"], KERNEL_LIBRARIES)
    _choice(source, "build_system", data["build_system"], BUILD_SYSTEMS)
    if data["clock_hz"] <= 0:
        raise TargetError(f"{source}: clock_hz must be positive")

    _check_fields(f"{source} [flash]", data["flash"], _FLASH_FIELDS)
    flash = FlashSpec(**data["flash"])
    if flash.budget_bytes > flash.size_bytes:
        raise TargetError(f"{source} [flash]: budget_bytes exceeds size_bytes")
    if flash.reserved_bytes >= flash.budget_bytes:
        raise TargetError(f"{source} [flash]: reserved_bytes leaves no room for a model")

    regions = []
    for index, table in enumerate(data["memory"]):
        where = f"{source} [[memory]] #{index + 1}"
        if not isinstance(table, dict):
            raise TargetError(f"{where}: must be a table")
        _check_fields(where, table, _MEMORY_FIELDS)
        _choice(where, "kind", table["kind"], MEMORY_KINDS)
        region = MemoryRegion(**table)
        if region.reserved_bytes > region.size_bytes:
            raise TargetError(f"{where}: reserved_bytes exceeds size_bytes")
        regions.append(region)
    names = [region.name for region in regions]
    if len(set(names)) != len(names):
        raise TargetError(f"{source}: memory region names must be unique")
    if not any(region.arena for region in regions):
        raise TargetError(f"{source}: no memory region has arena = true")

    console = None
    if "console" in data:
        _check_fields(f"{source} [console]", data["console"], _CONSOLE_FIELDS)
        console = ConsoleSpec(**data["console"])
        _choice(f"{source} [console]", "kind", console.kind, CONSOLE_KINDS)

    if data["build_system"] == "cmake-arm":
        if flash.origin is None or any(region.origin is None for region in regions):
            raise TargetError(f"{source}: cmake-arm targets need an origin for flash and every memory region")

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
        url=data.get("url"),
        notes=data.get("notes"),
        path=path,
    )


def load_target_file(path: Path) -> Target:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetError(f"cannot read target file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: invalid TOML: {exc}") from None
    return parse_target(data, source=str(path), path=path)


def targets_dir() -> Path:
    return data_dir("targets")


def bundled_target_names() -> list[str]:
    return sorted(path.stem for path in targets_dir().glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """A bundled target by name, or a user's own file by path (anything ending .toml)."""
    if name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path:
        return load_target_file(Path(name_or_path))
    path = targets_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        names = bundled_target_names()
        close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known targets: {', '.join(names)}"
        raise TargetError(f"unknown target {name_or_path!r}{hint}")
    target = load_target_file(path)
    if target.name != name_or_path:
        raise TargetError(f"{path}: name {target.name!r} does not match the file name")
    return target


def load_all_targets() -> list[Target]:
    return [load_target(name) for name in bundled_target_names()]
