"""STM32 clock trees (tinyscale.boards.clocks) against the reference manuals' tables, and the
generated set-up run on the host against a fake register file (success and both fallbacks).

The expected figures below are transcribed from the manuals independently of the
module's data: RM0383 (F411), RM0385 (F746), RM0433 rev 7 Table 17 (H743), RM0351
(L476), RM0456 (U585), each at 2.7-3.6 V (every board here runs at 3.3 V).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tinyscale.boards import clocks
from tinyscale.boards.targets import load_all_targets, load_target, targets_dir
from tinyscale.cli import app
from tinyscale.errors import TargetError
from tinyscale.project import render as fw
from tinyscale.project.board_glue import (
    _STM32_FAMILIES,
    clock_setup,
    cmake_arm_context,
    uart_glue,
)
from tinyscale.project.context import ArenaPlan

MHZ = 1_000_000
HOST_GCC = shutil.which("gcc")
STM32_TARGETS = [t for t in load_all_targets() if clocks.find_spec(t.mcu)]


def test_every_bundled_uart_board_has_clock_data():
    # The five STM32 boards (the UART consoles); semihosting boards run at QEMU's fixed clock.
    uart = {t.name for t in load_all_targets()
            if t.build_system == "cmake-arm" and t.console and t.console.kind == "uart"}
    assert uart == {t.name for t in STM32_TARGETS}
    assert {"nucleo-f411re", "stm32f746g-disco", "nucleo-h743zi2", "nucleo-l476rg", "b-u585i-iot02a"} <= uart


# ---- Flash wait states: (HCLK in Hz, LATENCY) at both sides of every row boundary.

def _boundaries(rows_mhz: list[tuple[float, int]]) -> list[tuple[int, int]]:
    """Each row's upper bound gives its latency; 1 Hz above gives the next row's."""
    cases = []
    for (top, latency), nxt in zip(rows_mhz, rows_mhz[1:] + [None]):
        cases.append((int(top * MHZ), latency))
        if nxt:
            cases.append((int(top * MHZ) + 1, nxt[1]))
    return cases


# RM0383 table "Number of wait states according to CPU clock (HCLK) frequency", 2.7-3.6 V.
F411_WAIT_STATES = _boundaries([(30, 0), (64, 1), (90, 2), (100, 3)])
# RM0385 the same table: 0 WS up to 30 MHz, one more per 30 MHz, 7 WS for 210-216 MHz.
F746_WAIT_STATES = _boundaries([(30, 0), (60, 1), (90, 2), (120, 3), (150, 4), (180, 5), (210, 6), (216, 7)])
# RM0351 table "Number of wait states according to HCLK frequency".
L476_RANGE1_WAIT_STATES = _boundaries([(16, 0), (32, 1), (48, 2), (64, 3), (80, 4)])
L476_RANGE2_WAIT_STATES = _boundaries([(6, 0), (12, 1), (18, 2), (26, 3)])
# RM0456 table "Number of wait states according to CPU clock (HCLK) frequency (LPM=0)", as
# ST's LL driver states it (stm32u5xx_ll_utils.c UTILS_SCALEx_LATENCYy_FREQ).
U585_WAIT_STATES = {
    "range 1": _boundaries([(32, 0), (64, 1), (96, 2), (128, 3), (160, 4)]),
    "range 2": _boundaries([(25, 0), (50, 1), (75, 2), (100, 3)]),
    "range 3": _boundaries([(12.5, 0), (25, 1), (37.5, 2), (50, 3)]),
    "range 4": _boundaries([(8, 0), (16, 1), (24, 2)]),
}


def _range(spec: clocks.ClockSpec, name: str) -> clocks.VoltageRange:
    return next(r for r in spec.ranges if r.name == name)


@pytest.mark.parametrize("hclk_hz, latency", F411_WAIT_STATES)
def test_f411_wait_states_follow_rm0383(hclk_hz, latency):
    for voltage in clocks.F411.ranges:  # the 3.3 V column does not depend on the VOS scale
        if hclk_hz <= voltage.hclk_max_hz:
            assert clocks.wait_state(voltage, hclk_hz).latency == latency


@pytest.mark.parametrize("hclk_hz, latency", F746_WAIT_STATES)
def test_f746_wait_states_follow_rm0385(hclk_hz, latency):
    assert clocks.wait_state(_range(clocks.F746, "scale 1 + over-drive"), hclk_hz).latency == latency


@pytest.mark.parametrize("name, cases", [("range 1", L476_RANGE1_WAIT_STATES), ("range 2", L476_RANGE2_WAIT_STATES)])
def test_l476_wait_states_follow_rm0351(name, cases):
    voltage = _range(clocks.L476, name)
    for hclk_hz, latency in cases:
        assert clocks.wait_state(voltage, hclk_hz).latency == latency, (name, hclk_hz)


@pytest.mark.parametrize("name", U585_WAIT_STATES)
def test_u585_wait_states_follow_rm0456(name):
    voltage = _range(clocks.U585, name)
    for hclk_hz, latency in U585_WAIT_STATES[name]:
        assert clocks.wait_state(voltage, hclk_hz).latency == latency, (name, hclk_hz)


# RM0433 rev 7 Table 17, by AXI clock: (upper bound MHz, LATENCY, WRHIGHFREQ); VOS0 adds 4 WS to 240 MHz.
H743_TABLE_17 = [(70, 0, 0), (140, 1, 1), (185, 2, 1), (210, 2, 2), (225, 3, 2)]


@pytest.mark.parametrize("name, rows", [("VOS1", H743_TABLE_17), ("VOS0", H743_TABLE_17 + [(240, 4, 2)])])
def test_h743_wait_states_and_programming_delay_follow_rm0433_table_17(name, rows):
    voltage = _range(clocks.H743, name)
    low = 0
    for top_mhz, latency, wrhighfreq in rows:
        for hz in (low + 1, top_mhz * MHZ):
            row = clocks.wait_state(voltage, hz)
            assert (row.latency, row.wrhighfreq) == (latency, wrhighfreq), (name, hz)
        low = top_mhz * MHZ
    with pytest.raises(TargetError):
        clocks.wait_state(voltage, low + 1)  # beyond the table: no latency is safe


# ---- Voltage scaling: the lowest-power setting that allows the clock (datasheets' operating conditions).

@pytest.mark.parametrize("spec, sysclk_mhz, name", [
    (clocks.F411, 64, "scale 3"), (clocks.F411, 65, "scale 2"), (clocks.F411, 84, "scale 2"), (clocks.F411, 85, "scale 1"),
    (clocks.F411, 100, "scale 1"),
    (clocks.F746, 144, "scale 3"), (clocks.F746, 168, "scale 2"), (clocks.F746, 180, "scale 1"),
    (clocks.F746, 181, "scale 1 + over-drive"), (clocks.F746, 216, "scale 1 + over-drive"),
    (clocks.H743, 400, "VOS1"), (clocks.H743, 401, "VOS0"), (clocks.H743, 480, "VOS0"),
    (clocks.L476, 26, "range 2"), (clocks.L476, 27, "range 1"), (clocks.L476, 80, "range 1"),
    # U5: the regulator allows 25/55/110 MHz in ranges 4/3/2, their wait-state tables stop at 24/50/100
    (clocks.U585, 24, "range 4"), (clocks.U585, 25, "range 3"), (clocks.U585, 50, "range 3"),
    (clocks.U585, 51, "range 2"), (clocks.U585, 100, "range 2"), (clocks.U585, 101, "range 1"),
    (clocks.U585, 160, "range 1"),
])
def test_voltage_scaling_follows_the_manuals(spec, sysclk_mhz, name):
    assert clocks.voltage_range(spec, sysclk_mhz * MHZ).name == name


def test_only_f746_over_drive_h743_vos0_and_u585_ranges_1_2_need_their_extra_steps():
    assert [r.name for r in clocks.F746.ranges if r.overdrive] == ["scale 1 + over-drive"]
    assert [r.name for r in clocks.H743.ranges if r.overdrive] == ["VOS0"]
    assert {r.name for r in clocks.U585.ranges if r.boost} == {"range 1", "range 2"}


# ---- Every bundled board: a valid configuration that hits its clock_hz exactly.

# (source Hz, VCO input range, VCO output range, M, N, output-divider choices) per the manuals
# (RM0383/RM0385 §RCC_PLLCFGR, RM0433 §RCC_PLL1DIVR with DS12110 rev V's wide VCO,
# RM0351 §RCC_PLLCFGR, RM0456 §RCC_PLL1CFGR/PLL1DIVR with DS13086), transcribed apart from the module.
PLL_RULES = {
    "F4": (16 * MHZ, (1, 2), (100, 432), range(2, 64), range(50, 433), {2, 4, 6, 8}),
    "F7": (16 * MHZ, (1, 2), (100, 432), range(2, 64), range(50, 433), {2, 4, 6, 8}),
    "H7": (64 * MHZ, (2, 16), (192, 960), range(1, 64), range(4, 513), set(range(2, 129, 2))),
    "L4": (16 * MHZ, (4, 16), (64, 344), range(1, 9), range(8, 87), {2, 4, 6, 8}),
    "U5": (16 * MHZ, (4, 16), (128, 344), range(1, 17), range(4, 513), set(range(1, 129))),
}
# APB maxima per bus at the plan's voltage setting (RM0383 §6.2, RM0385 §5.2, DS12110, RM0351, RM0456).
APB_MAX_MHZ = {"F4": {"apb1": 50, "apb2": 100}, "F7": {"apb1": 54, "apb2": 108},
               "H7": {"apb1": 120, "apb2": 120, "apb3": 120, "apb4": 120}, "L4": {"apb1": 80, "apb2": 80},
               "U5": {"apb1": 160, "apb2": 160}}
# The flash latency each board needs at its clock_hz, from the tables above.
BOARD_LATENCY = {"nucleo-f411re": 3, "stm32f746g-disco": 7, "nucleo-h743zi2": 4, "nucleo-l476rg": 4,
                 "b-u585i-iot02a": 4}


@pytest.mark.parametrize("target", STM32_TARGETS, ids=lambda t: t.name)
def test_every_bundled_stm32_target_gets_a_valid_configuration_at_its_clock(target):
    plan = clocks.plan_clock(clocks.find_spec(target.mcu), target.clock_hz)
    source_hz, ref_mhz, vco_mhz, m_range, n_range, outs = PLL_RULES[plan.family]
    pll = plan.pll
    assert (pll.source, pll.source_hz) == ("hsi", source_hz)  # the safe default
    assert pll.m in m_range and pll.n in n_range and pll.out in outs
    ref = source_hz / pll.m
    assert ref_mhz[0] * MHZ <= ref <= ref_mhz[1] * MHZ
    assert vco_mhz[0] * MHZ <= ref * pll.n <= vco_mhz[1] * MHZ
    assert plan.exact and source_hz * pll.n == target.clock_hz * pll.m * pll.out == plan.sysclk_hz * pll.m * pll.out
    assert plan.wait_state.latency == BOARD_LATENCY[target.name]
    for bus, hz in plan.apb_hz.items():
        assert hz * plan.apb_dividers[bus] == plan.hclk_hz and hz <= APB_MAX_MHZ[plan.family][bus] * MHZ, bus
    if pll.q is not None:  # F4/F7: the 48 MHz domain stays within its maximum
        assert ref * pll.n / pll.q <= 48 * MHZ and pll.q in range(2, 16)


def test_h743_runs_its_bus_at_half_the_core_clock_as_vos0_requires():
    plan = clocks.plan_clock(clocks.H743, 480 * MHZ)
    assert (plan.hclk_divider, plan.hclk_hz, plan.systick_hz) == (2, 240 * MHZ, 480 * MHZ)  # DS12110: HCLK <= 240 MHz


def test_hse_bypass_from_the_st_link_mco_is_planned_too():
    # The ST-LINK's 8 MHz MCO on OSC_IN (UM1724 for the Nucleo-64, UM2407 for the Nucleo-144).
    plan = clocks.plan_clock(clocks.H743, 480 * MHZ, source="hse-bypass", hse_hz=8 * MHZ)
    assert plan.exact and plan.pll.source_hz * plan.pll.n == 480 * MHZ * plan.pll.m * plan.pll.out
    program = clocks.clock_program(plan)
    assert any(step.reason == "HSE did not start" for step in program.prepare)
    with pytest.raises(TargetError, match="HSE bypass clock must be"):
        clocks.plan_clock(clocks.H743, 480 * MHZ, source="hse-bypass", hse_hz=100 * MHZ)


def test_an_unreachable_clock_gives_the_closest_below_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="tinyscale.boards.clocks"):
        plan = clocks.plan_clock(clocks.L476, 79_999_999)
    # From HSI16 every L4 PLL output is 16 MHz * N / (M * R); the largest at most 79,999,999 Hz
    # with a 4-16 MHz VCO input: 79 MHz (M=4, N=79, R=4, VCO 316 MHz).
    best = max(16 * MHZ * n // (m * r) for m in range(1, 5) for n in range(8, 87) for r in (2, 4, 6, 8)
               if 64 * MHZ <= 16 * MHZ * n / m <= 344 * MHZ and 16 * MHZ * n % (m * r) == 0
               and 16 * MHZ * n // (m * r) <= 79_999_999)
    assert (plan.exact, plan.sysclk_hz) == (False, best)
    assert "closest below" in caplog.text and "79999999" in caplog.text


# ---- Invalid requests: one clear line, TargetError, exit 2.

def _edited_target(tmp_path: Path, name: str, clock_hz: int) -> Path:
    text = (targets_dir() / f"{name}.toml").read_text()
    text = re.sub(r"^clock_hz = .*$", f"clock_hz = {clock_hz}", text, flags=re.MULTILINE)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, too_fast_hz, maximum", [
    ("nucleo-f411re", 120 * MHZ, 100 * MHZ), ("stm32f746g-disco", 240 * MHZ, 216 * MHZ),
    ("nucleo-h743zi2", 550 * MHZ, 480 * MHZ), ("nucleo-l476rg", 100 * MHZ, 80 * MHZ),
    ("b-u585i-iot02a", 200 * MHZ, 160 * MHZ),
])
def test_a_clock_above_the_family_maximum_is_refused_when_loading(tmp_path, name, too_fast_hz, maximum):
    path = _edited_target(tmp_path, name, too_fast_hz)
    with pytest.raises(TargetError, match=f"mcu '.*': clock_hz {too_fast_hz} is above {maximum} Hz") as info:
        load_target(str(path))
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["fit", "--target", str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output


def test_a_clock_below_what_the_pll_can_make_is_refused(tmp_path):
    with pytest.raises(TargetError, match="no PLL setting reaches"):
        load_target(str(_edited_target(tmp_path, "nucleo-f411re", 10 * MHZ)))


# ---- The register program: fields decoded back with the manuals' bit positions.

def _bits(value: int, low: int, width: int) -> int:
    return (value >> low) & ((1 << width) - 1)


def _written(program: clocks.ClockProgram, address: int) -> int:
    value = 0
    for step in program.prepare + program.switch:
        if step.kind == "modify" and step.address == address:
            value = (value & ~step.mask) | step.value
    return value


def _decode(family: str, program: clocks.ClockProgram) -> tuple[int, int, int, int]:
    """(M, N, output divider, flash LATENCY) from the written registers."""
    if family in ("F4", "F7"):  # RCC_PLLCFGR 0x40023804: PLLM 5:0, PLLN 14:6, PLLP 17:16 (00 = /2)
        cfg = _written(program, 0x40023804)
        return _bits(cfg, 0, 6), _bits(cfg, 6, 9), 2 * (_bits(cfg, 16, 2) + 1), _written(program, 0x40023C00) & 0xF
    if family == "H7":  # RCC_PLLCKSELR DIVM1 9:4; RCC_PLL1DIVR DIVN1 8:0, DIVP1 15:9 (value - 1)
        divr = _written(program, 0x58024430)
        return (_bits(_written(program, 0x58024428), 4, 6), _bits(divr, 0, 9) + 1, _bits(divr, 9, 7) + 1,
                _written(program, 0x52002000) & 0xF)
    if family == "L4":  # RCC_PLLCFGR 0x4002100C: PLLM 6:4 (-1), PLLN 14:8, PLLR 26:25 (00 = /2)
        cfg = _written(program, 0x4002100C)
        return _bits(cfg, 4, 3) + 1, _bits(cfg, 8, 7), 2 * (_bits(cfg, 25, 2) + 1), _written(program, 0x40022000) & 0x7
    # U5: RCC_PLL1CFGR 0x46020C28 PLL1M 11:8 (-1); RCC_PLL1DIVR 0x46020C34 PLL1N 8:0, PLL1R 30:24 (-1)
    divr = _written(program, 0x46020C34)
    return (_bits(_written(program, 0x46020C28), 8, 4) + 1, _bits(divr, 0, 9) + 1, _bits(divr, 24, 7) + 1,
            _written(program, 0x40022000) & 0xF)


@pytest.mark.parametrize("target", STM32_TARGETS, ids=lambda t: t.name)
def test_the_register_program_decodes_back_to_the_planned_clock(target):
    plan = clocks.plan_clock(clocks.find_spec(target.mcu), target.clock_hz)
    program = clocks.clock_program(plan)
    m, n, out, latency = _decode(plan.family, program)
    assert PLL_RULES[plan.family][0] * n // (m * out) == target.clock_hz
    assert latency == BOARD_LATENCY[target.name]
    # Wait states go up before SYSCLK switches: the latency write comes before the switch.
    kinds = [s.comment for s in program.prepare]
    assert any("FLASH_ACR" in c for c in kinds)
    assert any(".SW = PLL" in s.comment for s in program.switch)
    assert all(step.value & ~step.mask == 0 for step in program.prepare + program.switch + program.restore)


def test_u585_sets_the_booster_prescaler_before_enabling_the_booster_with_range_1():
    program = clocks.clock_program(clocks.plan_clock(clocks.U585, 160 * MHZ))
    order = [step.comment.split(":")[0].split(".")[0].split(" ")[0] for step in program.prepare if step.kind == "modify"]
    assert order.index("RCC_PLL1CFGR") < order.index("PWR_VOSR") < order.index("FLASH_ACR") < order.index("RCC_PLL1DIVR")
    vosr = next(step for step in program.prepare if step.comment.startswith("PWR_VOSR"))
    assert vosr.value == (0b11 << 16) | (1 << 18)  # range 1 and BOOSTEN together
    assert clocks.mboost_code(16 * MHZ) == 0 and clocks.mboost_code(24 * MHZ) == 1  # /1, then /2 above 16 MHz


def test_reset_clocks_agree_with_the_uart_glue():
    for spec in clocks.CLOCK_SPECS:
        assert _STM32_FAMILIES[spec.family].reset_clock_hz == spec.reset_clock_hz


# ---- The generated set-up, run on the host against a fake register file.

FAKE_REGISTERS = r"""
#include <stdint.h>
#include <stdio.h>
static uint32_t addresses[256], values[256];
static unsigned used;
static int pending = -1;
static char output[512];
static unsigned output_length;
uint32_t* ts_fake_reg(uint32_t address) {
  // A character written to the data register is taken when the next register is touched
  // (console_put always polls the status register first).
  if (pending >= 0 && values[pending] != 0xFFFFFFFFu) {
    output[output_length++] = (char)values[pending];
    values[pending] = 0xFFFFFFFFu;
  }
  for (unsigned i = 0; i < used; ++i) if (addresses[i] == address) {
    if (address == TS_FAKE_DATA) pending = (int)i;
    return &values[i];
  }
  addresses[used] = address; values[used] = address == TS_FAKE_DATA ? 0xFFFFFFFFu : 0u;
  if (address == TS_FAKE_DATA) pending = (int)used;
  return &values[used++];
}
#include "presets.h"
void board_init(void);
int main(void) {
  for (unsigned i = 0; i < sizeof(preset_address) / sizeof(preset_address[0]); ++i)
    *ts_fake_reg(preset_address[i]) |= preset_value[i];
  board_init();
  (void)ts_fake_reg(0);
  output[output_length] = 0;
  printf("%s", output);
  printf("BRR %u\n", (unsigned)*ts_fake_reg(TS_FAKE_BRR));
  printf("RVR %u\n", (unsigned)*ts_fake_reg(0xE000E014u));
  printf("SW %u\n", (unsigned)(*ts_fake_reg(TS_FAKE_SW) & TS_FAKE_SW_MASK));
  return 0;
}
"""


def _run_on_fake_registers(tmp_path: Path, target_name: str, failing: str | None) -> list[str]:
    target = load_target(target_name)
    clock = clock_setup(target)
    uart = uart_glue(target, clock)
    arena = ArenaPlan(0, 0, 16, target.arena_regions[0].name, "sram")
    context = cmake_arm_context(target, arena)
    template = fw._environment(fw.templates_root()).get_template("cmake-arm/src/board.c.jinja")
    source = template.render(ctx=_BoardContext(target, context))
    source = source.replace("#define TS_REG(address) (*(volatile uint32_t*)(uintptr_t)(address))",
                            "uint32_t* ts_fake_reg(uint32_t address);\n#define TS_REG(address) (*ts_fake_reg(address))")
    source = source.replace('__asm__ volatile("wfi");', "break;")
    # Every ready flag the program waits for is already set, except the one that is to fail.
    waits = [s for s in clock.program.prepare + clock.program.switch if s.kind == "wait" and s.reason != failing]
    data, status = (0x04, 0x00) if uart.layout == "v1" else (0x28, 0x1C)
    presets = [(s.address, s.value) for s in waits] + [(uart.usart_base + status, 1 << 7)]  # TXE
    (tmp_path / "board.c").write_text(source)
    (tmp_path / "presets.h").write_text(
        "static const uint32_t preset_address[] = {" + ", ".join(f"{a:#x}u" for a, _ in presets) + "};\n"
        "static const uint32_t preset_value[] = {" + ", ".join(f"{v:#x}u" for _, v in presets) + "};\n")
    (tmp_path / "fake.c").write_text(FAKE_REGISTERS)
    src = fw.templates_root() / "cmake-arm" / "src"
    brr = uart.usart_base + (0x08 if uart.layout == "v1" else 0x0C)
    switch = next(s for s in clock.program.switch if ".SW = PLL" in s.comment)
    exe = tmp_path / "board"
    command = [HOST_GCC, "-std=c11", "-O0", f"-I{src}", f"-I{fw.firmware_sources_dir()}", f"-I{tmp_path}",
               f"-DTS_FAKE_DATA={uart.usart_base + data:#x}u", f"-DTS_FAKE_BRR={brr:#x}u",
               f"-DTS_FAKE_SW={switch.address:#x}u", f"-DTS_FAKE_SW_MASK={switch.mask:#x}u",
               str(tmp_path / "board.c"), str(tmp_path / "fake.c"), "-o", str(exe)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(exe)], capture_output=True, timeout=60, check=True)
    return run.stdout.decode().split("\n")[:-1]  # keep the console's CR: it ends every line it sends


class _BoardContext:
    """The part of ProjectContext board.c.jinja reads."""

    def __init__(self, target, cmake_arm):
        self.target, self.cmake_arm, self.tinyscale_version = target, cmake_arm, "test"
        self.profile = False  # firmware --profile's tick timer is not part of the clock set-up


@pytest.mark.skipif(not HOST_GCC, reason="host gcc not installed")
@pytest.mark.parametrize("target_name", [t.name for t in STM32_TARGETS])
@pytest.mark.parametrize("failing", [None, "PLL did not lock", "switch to the PLL not confirmed"])
def test_generated_setup_reports_the_running_clock_and_falls_back(tmp_path, target_name, failing):
    target = load_target(target_name)
    clock = clock_setup(target)
    uart = uart_glue(target, clock)
    lines = _run_on_fake_registers(tmp_path, target_name, failing)
    switch = next(s for s in clock.program.switch if ".SW = PLL" in s.comment)
    if failing is None:
        hz, brr, sw = clock.plan.systick_hz, uart.brr_pll, switch.value
        assert lines[0] == f"clock {hz} Hz (PLL)\r"
    else:  # SYSCLK left on (or put back to) the reset source: SW = 0
        hz, brr, sw = clock.plan.reset_clock_hz, uart.brr_reset, 0
        assert lines[0] == f"clock {hz} Hz (reset clock: {failing})\r"
    # The UART divisor and the SysTick reload follow the clock that runs.
    assert lines[1:] == [f"BRR {brr}", f"RVR {hz // 1000 - 1}", f"SW {sw}"]


# ---- HSE bypass from the board file.

def _with_hse(tmp_path: Path, name: str, hse_hz: int) -> Path:
    text = (targets_dir() / f"{name}.toml").read_text()
    text = re.sub(r"^(clock_hz = .*)$", rf"\1\nhse_bypass_hz = {hse_hz}", text, count=1, flags=re.MULTILINE)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_a_board_file_can_run_the_pll_from_the_st_link_mco(tmp_path):
    target = load_target(str(_with_hse(tmp_path, "nucleo-l476rg", 8 * MHZ)))
    clock = clock_setup(target)
    assert (clock.plan.pll.source, clock.plan.pll.source_hz, clock.plan.sysclk_hz) == ("hse-bypass", 8 * MHZ, 80 * MHZ)
    hse = [s for s in clock.program.prepare if s.comment.startswith("RCC_CR.HSEBYP")]
    assert hse and hse[0].value == (1 << 16) | (1 << 18)  # HSEON | HSEBYP
    pllcfgr = next(s for s in clock.program.prepare if s.address == 0x4002100C)
    assert pllcfgr.value & 0x3 == 0b11  # PLLSRC = HSE (RM0351 RCC_PLLCFGR)


@pytest.mark.parametrize("name, hse_hz, message", [
    ("nucleo-l476rg", 100 * MHZ, "HSE bypass clock must be"),
    ("mps2-an386", 8 * MHZ, "hse_bypass_hz is only for the STM32 parts"),
])
def test_a_bad_hse_bypass_clock_is_refused_when_loading(tmp_path, name, hse_hz, message):
    with pytest.raises(TargetError, match=message):
        load_target(str(_with_hse(tmp_path, name, hse_hz)))


@pytest.mark.skipif(not HOST_GCC, reason="host gcc not installed")
@pytest.mark.parametrize("failing, expected", [(None, "clock 80000000 Hz (PLL)\r"),
                                               ("HSE did not start", "clock 4000000 Hz (reset clock: HSE did not start)\r")])
def test_generated_setup_from_hse_falls_back_when_the_mco_is_absent(tmp_path, failing, expected):
    path = _with_hse(tmp_path, "nucleo-l476rg", 8 * MHZ)
    assert _run_on_fake_registers(tmp_path, str(path), failing)[0] == expected
