"""The Arduino (nano33ble) and Pico SDK (rpi-pico) projects: glue compiled and run, placement, refusals.

The glue is compiled with -Wall -Werror by the host g++ and by arm-none-eabi-g++ with
each board's flags, against stand-ins for Arduino.h and the Pico SDK headers. On the
host it is also linked with a stub runner and a fake clock and USB host, and run: it
must wait for the host, run the self-test, and run it again when a host reconnects.
Golden trees and the every-target render live in tests/test_firmware.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_firmware import (  # noqa: F401 - fixtures
    ARM_GCC,
    ARM_GXX,
    HOST_GCC,
    HOST_GXX,
    _set_first_operator,
    assert_refused,
    compile_file,
    context_for,
    host_figures,
    model,
    needs_arm,
    needs_host_gcc,
    render,
    run_cli,
    workdir,
    write_edited_model,
)

from tinyscale.boards.targets import load_target
from tinyscale.errors import TemplateError
from tinyscale.project import render as fw
from tinyscale.project.board_glue import _RP2040_UART_PINS, HOST_WAIT_MS
from tinyscale.project.context import FirmwareOptions, ProjectContext

# Stand-ins with the real signatures: ArduinoCore-mbed's USBSerial (Serial on the Nano 33 BLE)
# drops writes while no host has the port open and has a non-explicit operator bool.
STUB_HEADERS = {
    "Arduino.h": """#pragma once
#include <stddef.h>
#include <stdint.h>
unsigned long millis(void);
unsigned long micros(void);
void delay(unsigned long ms);
class StubUSBSerial {
 public:
  void begin(unsigned long baud);
  size_t write(uint8_t c);
  size_t write(const uint8_t* buffer, size_t size);
  size_t write(const char* buffer, size_t size) { return write(reinterpret_cast<const uint8_t*>(buffer), size); }
  void flush(void);
  operator bool();
};
extern StubUSBSerial Serial;
""",
    "TensorFlowLite.h": "#pragma once\n",
    "pico/stdlib.h": """#pragma once
#include <stdbool.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
bool stdio_init_all(void);
void stdio_flush(void);
void sleep_ms(uint32_t ms);
uint32_t time_us_32(void);
#ifdef __cplusplus
}
#endif
""",
    "pico/stdio_usb.h": """#pragma once
#include <stdbool.h>
#ifdef __cplusplus
extern "C" {
#endif
bool stdio_usb_connected(void);
#ifdef __cplusplus
}
#endif
""",
}

# A fake clock and USB host: argv holds the times (ms) at which the host opens or closes
# the port, then the time the run ends. The stub runner reports each self-test on stderr
# (what the device did) and through the glue's console (what the host would see).
HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "model_data.h"
#include "selftest_data.h"
#include "tinyscale_platform.h"

static uint64_t now_us;
static long toggles[8];
static int toggle_count;
static long end_ms;

static bool host_connected(void) {
  bool connected = false;
  for (int i = 0; i < toggle_count; ++i) connected ^= (long)(now_us / 1000) >= toggles[i];
  return connected;
}

static void advance_us(uint64_t us) {
  now_us += us;
  if ((long)(now_us / 1000) >= end_ms) {
    fflush(stdout);
    exit(0);
  }
}

int ts_run_selftest(uint8_t* arena, size_t arena_bytes) {
  fprintf(stderr, "selftest at %lu ms\n", (unsigned long)(ts_time_us() / 1000));
  arena[0] = 1; arena[arena_bytes - 1] = 2;
  ts_console_write(arena_bytes == TS_ARENA_BYTES && ts_model_data[4] == 'T' ? "STUB OK\n" : "STUB BAD\n");
  advance_us(1500);  // the inference takes time
  return 0;
}

static void parse(int argc, char** argv) {
  toggle_count = argc - 2;
  for (int i = 0; i < toggle_count; ++i) toggles[i] = atol(argv[i + 1]);
  end_ms = atol(argv[argc - 1]);
}
"""
ARDUINO_HARNESS = HARNESS + r"""
#include "Arduino.h"
StubUSBSerial Serial;
unsigned long millis(void) { return (unsigned long)(now_us / 1000); }
unsigned long micros(void) { return (unsigned long)now_us; }
void delay(unsigned long ms) { advance_us(ms * 1000ull); }
void StubUSBSerial::begin(unsigned long) {}
size_t StubUSBSerial::write(uint8_t c) { return write(&c, 1); }
size_t StubUSBSerial::write(const uint8_t* buffer, size_t size) {
  return host_connected() ? fwrite(buffer, 1, size, stdout) : 0;
}
void StubUSBSerial::flush(void) {}
StubUSBSerial::operator bool() { delay(1); return host_connected(); }
void setup();
void loop();
int main(int argc, char** argv) {
  parse(argc, argv);
  setup();
  for (;;) loop();
}
"""
PICO_HARNESS = HARNESS + r"""
#include "pico/stdio_usb.h"
#include "pico/stdlib.h"
bool stdio_init_all(void) { return true; }
void stdio_flush(void) { fflush(stdout); }
void sleep_ms(uint32_t ms) { advance_us(ms * 1000ull); }
uint32_t time_us_32(void) { return (uint32_t)now_us; }
bool stdio_usb_connected(void) { return host_connected(); }
int ts_pico_main(void);
int main(int argc, char** argv) {
  parse(argc, argv);
  return ts_pico_main();
}
"""

BOARDS = {
    # glue source (relative to the project), extra compile flags, harness
    "nano33ble": ("tiny/tiny.ino", ["-x", "c++", "-include", "Arduino.h"], ARDUINO_HARNESS),
    # The harness drives the glue's main() as ts_pico_main().
    "rpi-pico": ("src/main.cc", ["-Dmain=ts_pico_main"], PICO_HARNESS),
}
# What each board's build compiles the glue with: ArduinoCore-mbed's
# variants/ARDUINO_NANO33BLE/cxxflags.txt (softfp, unsigned char, gnu++14) and the Pico SDK's
# RP2040 flags with the projects' C++17.
ARM_FLAGS = {
    "nano33ble": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=softfp", "-mfpu=fpv4-sp-d16", "-funsigned-char",
                  "-std=gnu++14"],
    "rpi-pico": ["-mcpu=cortex-m0plus", "-mthumb", "-std=c++17"],
}
TEN_SECONDS_MS = HOST_WAIT_MS


def write_stubs(directory: Path) -> Path:
    for name, text in STUB_HEADERS.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


@pytest.fixture(scope="module", params=sorted(BOARDS))
def project(request, model, host_figures, tmp_path_factory):
    context = context_for(model, host_figures, request.param)
    return context, render(context, tmp_path_factory.mktemp(request.param) / "p")


def compile_glue(compiler: str, context: ProjectContext, out: Path, work: Path, flags: list[str]) -> list[Path]:
    """The glue and the generated data, each compiled with -Wall -Wextra -Werror; returns the objects."""
    glue, glue_flags, _ = BOARDS[context.target.name]
    src = out / context.source_dir
    stubs = write_stubs(work / "stubs")
    objects = [work / "glue.o", work / "model_data.o", work / "selftest_data.o"]
    compile_file(compiler, out / glue, [*flags, *glue_flags, "-fno-rtti", "-fno-exceptions", f"-I{src}",
                                        f"-I{stubs}"], objects[0])
    c_compiler = HOST_GCC if compiler == HOST_GXX else ARM_GCC
    c_flags = [f for f in flags if not f.startswith(("-std=", "-nostdinc++"))]
    for name, obj in zip(("model_data.c", "selftest_data.c"), objects[1:]):
        compile_file(c_compiler, src / name, [*c_flags, "-std=c11", f"-I{src}"], obj)
    return objects


@pytest.fixture(scope="module")
def host_binary(project, tmp_path_factory) -> Path:
    if not (HOST_GCC and HOST_GXX):
        pytest.skip("host gcc/g++ not installed")
    context, out = project
    work = tmp_path_factory.mktemp(f"host-{context.target.name}")
    objects = compile_glue(HOST_GXX, context, out, work, ["-std=c++17"])
    harness = work / "harness.cc"
    harness.write_text(BOARDS[context.target.name][2])
    compile_file(HOST_GXX, harness, ["-std=c++17", f"-I{out / context.source_dir}", f"-I{work / 'stubs'}",
                                     "-Wno-unused-function"], work / "harness.o")
    binary = work / "glue"
    subprocess.run([HOST_GXX, *map(str, objects), str(work / "harness.o"), "-o", str(binary)], check=True, timeout=120)
    return binary


def run_glue(binary: Path, *times_ms: int) -> tuple[list[int], str]:
    """Selftest times (ms) and what the host saw, for host toggles `times_ms[:-1]` and the end."""
    result = subprocess.run([str(binary), *map(str, times_ms)], capture_output=True, timeout=30)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    runs = [int(line.split()[2]) for line in stderr.splitlines() if line.startswith("selftest at")]
    return runs, result.stdout.decode()  # bytes as sent: no newline translation


@needs_host_gcc
def test_glue_waits_for_the_host_then_runs_the_selftest(project, host_binary):
    context, _ = project
    runs, seen = run_glue(host_binary, 2_000, 4_000)  # a monitor opens the port after 2 s
    assert len(runs) == 1 and 2_000 <= runs[0] < 2_100
    # The Arduino glue sends CR LF itself; the Pico SDK's stdio translates "\n".
    newline = "\r\n" if context.build_system == "arduino" else "\n"
    assert seen == f"tinyscale tiny on {context.target.name}{newline}STUB OK{newline}"


@needs_host_gcc
def test_glue_runs_the_selftest_after_the_timeout_and_again_for_a_late_host(project, host_binary):
    context, _ = project
    runs, seen = run_glue(host_binary, TEN_SECONDS_MS + 5_000, TEN_SECONDS_MS + 7_000)
    assert len(runs) == 2
    assert TEN_SECONDS_MS <= runs[0] < TEN_SECONDS_MS + 100  # nobody listening: ran anyway
    assert TEN_SECONDS_MS + 5_000 <= runs[1] < TEN_SECONDS_MS + 5_300  # reported to the late host
    # USB CDC drops what nobody reads; the Pico's stdio (its UART too) keeps the first report.
    assert seen.count("STUB OK") == (2 if context.target.name == "rpi-pico" else 1)


@needs_host_gcc
def test_glue_reports_again_on_every_reconnection(project, host_binary):
    runs, _ = run_glue(host_binary, 1_000, 3_000, 5_000, 6_000)
    assert len(runs) == 2 and 1_000 <= runs[0] < 1_100 and 5_000 <= runs[1] < 5_300


def object_sections(obj: Path) -> dict[str, tuple[int, int]]:
    """name -> (size, alignment) from `arm-none-eabi-objdump -h`."""
    text = subprocess.run([ARM_GCC.replace("gcc", "objdump"), "-h", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    sections = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0].isdigit():
            sections[parts[1]] = (int(parts[2], 16), 2 ** int(parts[6].split("**")[1]))
    return sections


@needs_arm
def test_glue_compiles_for_the_board_with_arena_in_bss_and_model_in_flash(project, tmp_path):
    context, out = project
    flags = [*ARM_FLAGS[context.target.name], "-ffunction-sections", "-fdata-sections", "-nostdinc++"]
    glue, model_data, _ = compile_glue(ARM_GXX, context, out, tmp_path, flags)
    arena = [(size, align) for name, (size, align) in object_sections(glue).items() if "ts_arena" in name]
    assert arena == [(context.arena.arena_bytes, 16)]
    assert [n for n in object_sections(glue) if "ts_arena" in n][0].startswith(".bss")
    assert object_sections(model_data)[".rodata.ts_model_data"] == (context.model_size_bytes, 16)


# ---------------------------------------------------------------------------
# Refusals: one line, non-zero exit, nothing written


def board_file(directory: Path, base: str, name: str, *edits: tuple[str, str]) -> Path:
    text = load_target(base).path.read_text().replace(f'name = "{base}"', f'name = "{name}"')
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("base, edit", [
    ("nano33ble", ("size_bytes = 262_144            # [PS] 256 KB", "size_bytes = 131_072")),
    ("rpi-pico", ("size_bytes = 262_144            # [DS] 256 KB", "size_bytes = 32_768")),
])
def test_model_that_does_not_fit_the_board_is_refused(workdir, base, edit):
    board = board_file(workdir, base, "small", edit)
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "model.tflite"), "--target", str(board), "-o", str(workdir / "out"))
    assert_refused(result, 3, "does not fit small: SRAM", workdir, before)


@pytest.mark.parametrize("target_name, code, message", [
    ("nano33ble", 126, "operator BATCH_MATMUL is not in Arduino_TensorFlowLite"),
    ("rpi-pico", 105, "operator REVERSE_V2 is not in pico-tflmicro"),
])
def test_operator_the_board_library_lacks_is_refused(workdir, model, target_name, code, message):
    write_edited_model(model, workdir / "odd.tflite", _set_first_operator(code))
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "odd.tflite"), "--target", target_name, "-o", str(workdir / "out"))
    assert_refused(result, 1, message, workdir, before)


PORTENTA_H7 = (('mcu = "nRF52840"', 'mcu = "STM32H747XI"'), ('cpu = "cortex-m4"', 'cpu = "cortex-m7"'),
               ('fpu = "fpv4-sp-d16"', 'fpu = "fpv5-d16"'))


@pytest.mark.parametrize("base, edits, code, message", [
    ("nano33ble", PORTENTA_H7, 1, "the Arduino template builds for the Nano 33 BLE (nRF52840) only"),
    ("nano33ble", [('kind = "usb-cdc"', 'kind = "uart"')], 1, "Arduino projects print to Serial, a usb-cdc console"),
    ("rpi-pico", [('tx_pin = "GP0"', 'tx_pin = "GP4"')], 1,
     "a UART console needs instance UART0 or UART1 with its RP2040 pins"),
    # The chip fixes the core: a file that contradicts itself is a target-file error.
    ("rpi-pico", [('cpu = "cortex-m0plus"', 'cpu = "cortex-m33"')], 2,
     "mcu 'RP2040' (RP2040) has a cortex-m0plus core, but cpu is 'cortex-m33'"),
])
def test_board_glue_the_templates_cannot_make_is_refused(workdir, base, edits, code, message):
    board = board_file(workdir, base, "odd-board", *edits)
    before = {p.name for p in workdir.iterdir()}
    result = run_cli(str(workdir / "model.tflite"), "--target", str(board), "-o", str(workdir / "out"))
    assert_refused(result, code, message, workdir, before)


# A copy of a bundled file with its own name, SRAM and board label, as the README
# suggests: the glue follows `mcu`, so the label is free text again.
RELABELLED = {
    "nucleo-l476rg": (('board = "NUCLEO-L476RG (STM32L476RGT6)"', 'board = "my sensor node"'),
                      ("size_bytes = 131_072            # [DS] 96 KB SRAM1 + 32 KB SRAM2", "size_bytes = 98_304")),
    "nano33ble": (('board = "Arduino Nano 33 BLE / BLE Sense (nRF52840)"', 'board = "my BLE tag"'),
                  ("size_bytes = 262_144            # [PS] 256 KB", "size_bytes = 200_000")),
}


@pytest.mark.parametrize("base", sorted(RELABELLED))
def test_a_relabelled_copy_of_a_bundled_board_renders_firmware(model, host_figures, tmp_path, base):
    board = board_file(tmp_path, base, "my-board", *RELABELLED[base])
    target = load_target(str(board))
    assert "STM32" not in target.board and "nRF52840" not in target.board
    arena, expected = host_figures
    options = FirmwareOptions(target=target, out_dir=Path("unused"), name="tiny")
    context = fw.build_context(model, options, measured_arena_bytes=arena, expected=expected)
    files = render(context, tmp_path / "p")
    assert (files / "manifest.json").is_file()
    if base == "nucleo-l476rg":
        assert context.cmake_arm.uart.family == "L4"
    else:
        assert context.arduino.fqbn == "arduino:mbed_nano:nano33ble"


def test_usb_only_pico_enables_no_uart(model, host_figures, tmp_path):
    board = board_file(tmp_path, "rpi-pico", "pico-usb", ('kind = "uart"', 'kind = "usb-cdc"'))
    arena, expected = host_figures
    options = FirmwareOptions(target=load_target(str(board)), out_dir=Path("unused"), name="tiny")
    context = fw.build_context(model, options, measured_arena_bytes=arena, expected=expected)
    cmake = (render(context, tmp_path / "p") / "CMakeLists.txt").read_text()
    assert "pico_enable_stdio_usb(tiny 1)" in cmake and "pico_enable_stdio_uart(tiny 0)" in cmake
    assert "PICO_DEFAULT_UART" not in cmake


def test_rp2040_uart_pin_table_follows_the_datasheet_pattern():
    # RP2040 datasheet 2.19.2: GPIO n (0-29) carries UART((n + 4) // 8 % 2); TX when n % 4 == 0, RX when 1.
    for index, roles in _RP2040_UART_PINS.items():
        for role, pins in enumerate(roles):
            assert set(pins) == {n for n in range(30) if (n + 4) // 8 % 2 == index and n % 4 == role}


def test_template_path_that_renders_to_nothing_is_an_error(model, host_figures, tmp_path):
    context = context_for(model, host_figures, "nano33ble")
    (tmp_path / "tpl" / "{{ ctx.phi or '' }}").mkdir(parents=True)
    (tmp_path / "tpl" / "{{ ctx.phi or '' }}" / "x.txt").write_text("x")
    with pytest.raises(TemplateError, match="unusable name"):
        fw.render_tree(tmp_path / "tpl", tmp_path / "out", context)
