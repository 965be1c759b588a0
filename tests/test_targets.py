"""Bundled board files and the target schema.

Schema errors are exercised on a copy of a real bundled board, mutated one field
at a time, so each test shows exactly which mistake it is about.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from tinyscale.boards.chips import chip_families, find_chip
from tinyscale.boards.targets import (
    BUILD_SYSTEMS,
    Target,
    bundled_target_names,
    load_target,
    parse_target,
    targets_dir,
)
from tinyscale.cli import app
from tinyscale.errors import TargetError

# The boards the project promises to ship (brief of the targets/ directory).
EXPECTED_BOARDS = {
    "esp32",
    "esp32-s3",
    "esp32-c3",
    "stm32f746g-disco",
    "nucleo-h743zi2",
    "nucleo-l476rg",
    "nucleo-f411re",
    "b-u585i-iot02a",
    "nano33ble",
    "rpi-pico",
    "mps2-an386",
    "mps2-an500",
    "mps2-an505",
    "mps3-an547",
}
ESP_IDF_TARGETS = {"esp32", "esp32s3", "esp32c3"}

# A multi-region cmake-arm board makes the richest starting point for mutations.
BASE_BOARD = "nucleo-h743zi2"


def bundled_table(name: str = BASE_BOARD) -> dict[str, Any]:
    return tomllib.loads((targets_dir() / f"{name}.toml").read_text(encoding="utf-8"))


def _names_where(predicate: Callable[[Target], bool]) -> list[str]:
    return [name for name in bundled_target_names() if predicate(load_target(name))]


# --- every bundled file -------------------------------------------------------


def test_the_promised_boards_are_bundled():
    assert EXPECTED_BOARDS <= set(bundled_target_names())


@pytest.mark.parametrize("name", bundled_target_names())
def test_bundled_target_loads_under_its_file_name(name):
    target = load_target(name)
    assert target.name == name
    assert target.path is not None and target.path.stem == name


@pytest.mark.parametrize("name", bundled_target_names())
def test_bundled_target_leaves_room_for_a_model(name):
    target = load_target(name)
    assert target.flash.model_budget_bytes > 0
    assert all(region.arena_budget_bytes > 0 for region in target.arena_regions)


@pytest.mark.parametrize("name", bundled_target_names())
def test_bundled_target_toolchain_settings_agree(name):
    target = load_target(name)
    if target.build_system == "esp-idf":
        assert target.kernel_library == "esp-nn"
        assert target.cpu in ESP_IDF_TARGETS
        assert target.fpu is None
    else:
        assert target.kernel_library == "cmsis-nn"
        assert target.cpu.startswith("cortex-m")
        # Every Cortex-M here except the M0+ has an FPU the build must enable.
        assert (target.fpu is None) == (target.cpu == "cortex-m0plus")


@pytest.mark.parametrize("name", _names_where(lambda t: t.build_system == "cmake-arm"))
def test_cmake_arm_regions_do_not_overlap(name):
    target = load_target(name)
    spans = sorted((region.origin, region.origin + region.size_bytes, region.name) for region in target.memory)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        assert end <= start, f"{first} overlaps {second}"


@pytest.mark.parametrize("name", _names_where(lambda t: t.build_system == "cmake-arm"))
def test_cmake_arm_first_region_holds_the_arena(name):
    # The bare-metal linker convention: stack, heap and .data/.bss share the
    # first region with the arena, and that region's reserved_bytes counts them.
    target = load_target(name)
    assert target.memory[0].arena


@pytest.mark.parametrize("name", _names_where(lambda t: t.console is not None and t.console.kind == "uart"))
def test_uart_consoles_name_their_pins(name):
    target = load_target(name)
    console = target.console
    assert console.instance and console.tx_pin and console.rx_pin and console.baud == 115200
    # STM32 pins need their alternate function; ESP and RP2040 pins do not.
    assert (console.af is not None) == (target.build_system == "cmake-arm")


def test_esp32_s3_prefers_internal_sram_then_psram():
    regions = load_target("esp32-s3").arena_regions
    assert [region.kind for region in regions] == ["sram", "psram"]


def test_h743_arena_is_the_axi_sram():
    (region,) = load_target("nucleo-h743zi2").arena_regions
    assert (region.origin, region.size_bytes) == (0x24000000, 512 * 1024)


def test_nano33ble_budget_is_the_arduino_sketch_limit():
    target = load_target("nano33ble")
    assert target.flash.budget_bytes == 983_040
    assert target.build_system == "arduino" and target.console.kind == "usb-cdc"


def test_mps2_an386_matches_the_qemu_memory_map():
    target = load_target("mps2-an386")
    assert (target.flash.origin, target.flash.size_bytes) == (0, 4 * 1024 * 1024)
    (arena,) = target.arena_regions
    assert (arena.origin, arena.size_bytes) == (0x20000000, 4 * 1024 * 1024)
    assert target.console.kind == "semihosting"


MIB = 1024 * 1024


@pytest.mark.parametrize(("name", "cpu", "flash", "arenas", "clock_hz"), [
    # QEMU 7.2's `info mtree` / `info qtree` (cited in each file): image at the reset vector table
    # (init-svtor), arena in the SSRAM2/3 or the SSE-300's DTCM and ISRAM, Secure aliases on the M33.
    ("mps2-an500", "cortex-m7", (0x0, 4 * MIB), [(0x20000000, 4 * MIB)], 25_000_000),
    ("mps2-an505", "cortex-m33", (0x10000000, 4 * MIB), [(0x38000000, 4 * MIB)], 20_000_000),
    ("mps3-an547", "cortex-m55", (0x0, 512 * 1024), [(0x20000000, 512 * 1024), (0x21000000, 4 * MIB)], 32_000_000),
])
def test_qemu_boards_match_the_qemu_memory_maps(name, cpu, flash, arenas, clock_hz):
    target = load_target(name)
    assert target.cpu == cpu and target.clock_hz == clock_hz
    assert (target.flash.origin, target.flash.size_bytes) == flash
    assert [(r.origin, r.size_bytes) for r in target.arena_regions] == arenas
    assert target.console.kind == "semihosting" and target.kernel_library == "cmsis-nn"


def test_the_m55_takes_its_fpu_and_rejects_a_single_precision_one():
    table = bundled_table("mps3-an547")
    table["fpu"] = "fpv5-sp-d16"
    with pytest.raises(TargetError, match="fpu"):
        parse_target(table, "mps3-an547.toml")


# --- schema errors ------------------------------------------------------------


def _parent(table: dict, path: tuple) -> tuple[Any, Any]:
    """The container holding the last key of `path`, and that key."""
    *parents, last = path
    for key in parents:
        table = table[key]
    return table, last


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def mutate(table: dict) -> None:
        parent, key = _parent(table, path)
        parent[key] = value

    return mutate


def _delete(path: tuple) -> Callable[[dict], None]:
    def mutate(table: dict) -> None:
        parent, key = _parent(table, path)
        del parent[key]

    return mutate


def _no_arena(table: dict) -> None:
    for region in table["memory"]:
        region["arena"] = False


def _reserved_over_size(table: dict) -> None:
    region = table["memory"][0]
    region["reserved_bytes"] = region["size_bytes"] + 1


def _duplicate_region_name(table: dict) -> None:
    table["memory"][1]["name"] = table["memory"][0]["name"]


SCHEMA_ERRORS = [
    pytest.param(_set(("flash_kb",), 1024), "unknown key 'flash_kb'", id="unknown-top-key"),
    pytest.param(_set(("memory", 0, "sise_bytes"), 1), "unknown key 'sise_bytes'", id="unknown-region-key"),
    pytest.param(_delete(("flash", "size_bytes")), "missing required key 'size_bytes'", id="missing-flash-size"),
    pytest.param(_delete(("memory", 0, "size_bytes")), "missing required key 'size_bytes'", id="missing-region-size"),
    pytest.param(_set(("memory", 0, "size_bytes"), "512K"), "'size_bytes' must be int, got '512K'", id="size-as-string"),
    pytest.param(_set(("clock_hz",), 480.0), "'clock_hz' must be int", id="float-clock"),
    pytest.param(_set(("flash", "budget_bytes"), True), "'budget_bytes' must be int, got True", id="bool-as-size"),
    pytest.param(_set(("memory", 0, "reserved_bytes"), -1), "'reserved_bytes' must not be negative", id="negative-size"),
    pytest.param(_reserved_over_size, "reserved_bytes exceeds size_bytes", id="reserved-over-size"),
    pytest.param(_set(("flash", "budget_bytes"), 4 * 1024 * 1024), "budget_bytes exceeds size_bytes", id="budget-over-flash"),
    pytest.param(_set(("flash", "reserved_bytes"), 2 * 1024 * 1024), "leaves no room for a model", id="no-room-for-model"),
    pytest.param(_no_arena, "no memory region has arena = true", id="no-arena-region"),
    pytest.param(_duplicate_region_name, "memory region names must be unique", id="duplicate-region"),
    pytest.param(_set(("kernel_library",), "tflm"), "kernel_library 'tflm' is not one of", id="bad-kernel-library"),
    pytest.param(_set(("build_system",), "make"), "build_system 'make' is not one of", id="bad-build-system"),
    pytest.param(_set(("memory", 0, "kind"), "dram"), "kind 'dram' is not one of", id="bad-memory-kind"),
    pytest.param(_set(("console", "kind"), "jtag"), "kind 'jtag' is not one of", id="bad-console-kind"),
    pytest.param(_set(("schema_version",), 2), "schema_version 2 unsupported", id="future-schema"),
    pytest.param(_set(("memory", 0), "axi"), "must be a table", id="region-not-a-table"),
    pytest.param(_delete(("memory", 0, "origin")), "need an origin", id="cmake-arm-without-origin"),
    # Compiler flags and chips: a value the toolchain, the kernels or the chip lack.
    pytest.param(_set(("cpu",), "cortex-m99"), "cpu 'cortex-m99' is not one of cortex-m0, ", id="unknown-cpu"),
    pytest.param(_set(("fpu",), "banana"), "fpu 'banana' is not one of fpv5-sp-d16, fpv5-d16", id="unknown-fpu"),
    pytest.param(_set(("kernel_library",), "esp-nn"), "kernel_library 'esp-nn' has no kernels for cpu 'cortex-m7'",
                 id="kernels-for-another-cpu"),
    pytest.param(_delete(("mcu",)), "missing required key 'mcu'", id="uart-console-without-mcu"),
    pytest.param(_set(("mcu",), "STM32G474RE"), "mcu 'STM32G474RE' is not a chip tinyscale knows",
                 id="uart-console-on-an-unknown-chip"),
    pytest.param(_set(("mcu",), "STM32F411RE"), "mcu 'STM32F411RE' (STM32F4) has a cortex-m4 core, but cpu is 'cortex-m7'",
                 id="mcu-with-another-core"),
    pytest.param(_set(("mcu",), "STM32F746NG"), "(STM32F7) has an FPU taking fpv5-sp-d16, but fpu is 'fpv5-d16'",
                 id="mcu-with-another-fpu"),
    # The address map: 32 bits, no two ranges sharing an address.
    pytest.param(_set(("memory", 0, "origin"), 0xFFFF_0000), "past the 4 GB (32-bit) address space",
                 id="region-past-4-gb"),
    pytest.param(_set(("flash", "origin"), 0xFFF0_0000), "[flash]: origin 0xFFF00000 + budget_bytes", id="flash-past-4-gb"),
    pytest.param(_set(("memory", 1, "origin"), 0x2400_1000), "[[memory]] 'axi_sram' overlaps [[memory]] 'dtcm'",
                 id="overlapping-regions"),
    pytest.param(_set(("flash", "origin"), 0x2401_0000), "'axi_sram' overlaps [flash]", id="flash-over-a-region"),
    pytest.param(_set(("memory", 1, "size_bytes"), 0), "size_bytes must be positive", id="empty-region"),
    # Strings rendered into generated sources, and console numbers the glue computes with.
    pytest.param(_set(("board",), "NUCLEO\nint x;"), "'board' must be one non-empty line of text", id="multi-line-board"),
    pytest.param(_set(("name",), " "), "'name' must be one non-empty line of text", id="blank-name"),
    pytest.param(_set(("console", "baud"), 0), "'baud' must be positive", id="zero-baud"),
    pytest.param(_set(("console", "af"), 16), "'af' must be an alternate-function number 0-15, got 16", id="af-too-big"),
]


@pytest.mark.parametrize("mutate, message", SCHEMA_ERRORS)
def test_schema_error_names_the_problem(mutate, message):
    table = copy.deepcopy(bundled_table())
    mutate(table)
    with pytest.raises(TargetError, match=re.escape(message)) as caught:
        parse_target(table, source="board.toml")
    assert str(caught.value).startswith("board.toml")


@pytest.mark.parametrize("board, mutate, message", [
    ("rpi-pico", _set(("fpu",), "fpv4-sp-d16"), "fpu 'fpv4-sp-d16' given, but cpu 'cortex-m0plus' has no FPU option"),
    ("esp32", _set(("fpu",), "fpv4-sp-d16"), "cpu 'esp32' has no FPU option"),
    ("esp32", _set(("cpu",), "cortex-m4"), "cpu 'cortex-m4' is not one of esp32, "),
    ("esp32", _set(("mcu",), "ESP32-S3"), "mcu 'ESP32-S3' (ESP32-S3) has a esp32s3 core, but cpu is 'esp32'"),
    ("nano33ble", _delete(("mcu",)), "missing required key 'mcu': arduino projects for this board are made per chip; "
                                     'name its part number, e.g. mcu = "nRF52840"'),
    ("rpi-pico", _set(("mcu",), "RP2350"), "mcu 'RP2350' is not a chip tinyscale knows"),
    ("nano33ble", _set(("flash", "origin"), 0x2000_0000), "'ram' overlaps [flash]"),
])
def test_chip_and_address_errors_on_other_boards(board, mutate, message):
    table = copy.deepcopy(bundled_table(board))
    mutate(table)
    with pytest.raises(TargetError, match=re.escape(message)):
        parse_target(table, source="board.toml")


def test_mcu_is_matched_in_any_case():
    table = bundled_table()
    table["mcu"] = "stm32h743zi"
    assert parse_target(table, source="board.toml").mcu == "stm32h743zi"


def test_a_chip_nothing_depends_on_may_be_unknown():
    # A semihosting Cortex-M board: no build step needs the chip's family.
    table = bundled_table("mps2-an386")
    table["mcu"] = "SSE-300"
    assert parse_target(table, source="board.toml").mcu == "SSE-300"
    del table["mcu"]
    assert parse_target(table, source="board.toml").mcu is None


@pytest.mark.parametrize("name", bundled_target_names())
def test_bundled_target_names_a_chip_that_agrees_with_its_core(name):
    target = load_target(name)
    chip = find_chip(target.mcu or "")
    assert chip is not None, f"{name}: mcu {target.mcu!r}"
    assert chip.cpu == target.cpu and (target.fpu is None or target.fpu in chip.fpus)


def test_every_esp_idf_cpu_the_schema_accepts_has_a_cpu_frequency():
    from tinyscale.boards.chips import ESP_IDF_CPUS
    from tinyscale.project.board_glue import _ESP_CPU_MHZ

    assert set(ESP_IDF_CPUS) <= set(_ESP_CPU_MHZ)


def test_every_stm32_family_the_schema_knows_has_uart_glue():
    from tinyscale.project.board_glue import _STM32_FAMILIES

    stm32 = {family.removeprefix("STM32") for family in chip_families() if family.startswith("STM32")}
    assert stm32 == set(_STM32_FAMILIES)


@pytest.mark.parametrize("name", bundled_target_names())
def test_bundled_target_cites_no_local_path(name):
    # The comments cite public sources; a path on the development machine helps no user.
    text = (targets_dir() / f"{name}.toml").read_text(encoding="utf-8")
    assert not re.search(r"(?<![\w.])/(work|home|root|tmp|Users)/", text), name


def test_the_unmutated_base_board_is_valid():
    # Guards the schema-error tests: each failure above comes from its mutation.
    assert parse_target(bundled_table(), source="board.toml").name == BASE_BOARD


def test_invalid_toml_is_a_target_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "broken"\n[flash\nsize_bytes = 1\n', encoding="utf-8")
    with pytest.raises(TargetError, match="broken.toml: invalid TOML"):
        load_target(str(path))


def test_missing_file_is_a_target_error(tmp_path):
    with pytest.raises(TargetError, match="cannot read target file .*absent.toml"):
        load_target(str(tmp_path / "absent.toml"))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(TargetError, match="unknown target 'esp23'; did you mean .*esp32") as caught:
        load_target("esp23")
    assert "mps2" not in str(caught.value)


@pytest.mark.parametrize("spelling, name", [("ESP32", "esp32"), ("Nucleo-L476RG", "nucleo-l476rg"),
                                            ("RPI-PICO", "rpi-pico")])
def test_bundled_name_matches_in_any_case(spelling, name):
    assert load_target(spelling).name == name


@pytest.mark.parametrize("typo, closest", [("ESP33", "esp32"), ("nucleo-f411", "nucleo-f411re"),
                                           ("ESP32-S2", "esp32-s3")])
def test_unknown_name_suggests_the_closest_one(typo, closest):
    with pytest.raises(TargetError) as caught:
        load_target(typo)
    assert str(caught.value) == f"unknown target {typo!r}; did you mean {closest}?"


def test_unknown_name_without_close_match_lists_the_boards():
    with pytest.raises(TargetError, match="known targets: .*nucleo-f411re"):
        load_target("zzzzzz")


def test_bundled_file_whose_name_field_disagrees_is_rejected(tmp_path, monkeypatch):
    source = (targets_dir() / "nucleo-f411re.toml").read_text(encoding="utf-8")
    (tmp_path / "renamed.toml").write_text(source, encoding="utf-8")
    monkeypatch.setattr("tinyscale.boards.targets.targets_dir", lambda: tmp_path)
    with pytest.raises(TargetError, match="name 'nucleo-f411re' does not match the file name"):
        load_target("renamed")


# --- a user's own board file --------------------------------------------------


def _user_board(tmp_path: Path) -> Path:
    source = (targets_dir() / "nucleo-f411re.toml").read_text(encoding="utf-8")
    path = tmp_path / "my board.toml"
    path.write_text(source.replace('name = "nucleo-f411re"', 'name = "my-f411"'), encoding="utf-8")
    return path


def test_user_file_loads_by_path(tmp_path):
    path = _user_board(tmp_path)
    target = load_target(str(path))
    assert target.name == "my-f411"
    assert target.path == path
    assert target.flash.size_bytes == 512 * 1024


def test_user_file_loads_by_relative_path(tmp_path, monkeypatch):
    _user_board(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert load_target("my board.toml").name == "my-f411"


# --- the command line ---------------------------------------------------------


def test_cli_targets_lists_every_board():
    result = CliRunner().invoke(app, ["targets"])
    assert result.exit_code == 0, result.output
    for name in bundled_target_names():
        assert name in result.stdout
    for build_system in BUILD_SYSTEMS:
        assert build_system in result.stdout


def test_cli_unknown_target_path_is_one_line_on_stderr(tmp_path):
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(app, ["fit", "--target", str(missing), "--base", "tiny", "--no-verify"])
    assert result.exit_code == TargetError.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot read target file") and "nope.toml" in lines[0]
    assert "Traceback" not in result.output


def test_cli_misspelt_target_name_suggests_the_board():
    result = CliRunner().invoke(app, ["fit", "--target", "esp23", "--base", "tiny", "--no-verify"])
    assert result.exit_code == TargetError.exit_code
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "did you mean" in result.stderr and "esp32" in result.stderr


def test_cli_target_name_in_capitals_is_the_bundled_board():
    result = CliRunner().invoke(app, ["fit", "--target", "ESP32", "--base", "tiny", "--no-verify", "--json"])
    assert result.exit_code == 0, result.output
    assert '"target": "esp32"' in result.stdout


def test_cli_unknown_cpu_is_one_line_naming_the_key(tmp_path):
    path = _user_board(tmp_path)
    path.write_text(path.read_text().replace('cpu = "cortex-m4"', 'cpu = "cortex-m99"'))
    result = CliRunner().invoke(app, ["fit", "--target", str(path), "--base", "tiny", "--no-verify"])
    assert result.exit_code == TargetError.exit_code
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cpu 'cortex-m99' is not one of" in result.stderr and "Traceback" not in result.output
