"""STM32 clock trees: the PLL, flash wait states, voltage scaling and bus prescalers
that run a chip at its target's `clock_hz`, and the register program that sets them.

QEMU models none of these clock trees, so every number the firmware writes is
computed here from the reference manuals' tables and tested against them
(tests/test_clocks.py). Pure data and integer arithmetic: no TensorFlow, no templates.

Sources (each family's data cites its section):
  RM0383  STM32F411xC/E reference manual      (NUCLEO-F411RE)
  RM0385  STM32F75xxx/74xxx reference manual  (STM32F746G-DISCO)
  RM0433  STM32H742/743/750/753 reference manual, rev 7 (NUCLEO-H743ZI2)
  RM0351  STM32L4x5/L4x6 reference manual     (NUCLEO-L476RG)
  RM0456  STM32U5 series reference manual     (B-U585I-IOT02A)
and the datasheets' "general operating conditions" tables (DS10314 F411, DS10916 F746,
DS12110 H743 revision V, DS10198 L476, DS13086 U585) for the frequency maxima.
Every board here is powered at 3.3 V, so only the 2.7-3.6 V wait-state columns are used.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction

from tinyscale.errors import TargetError

log = logging.getLogger(__name__)

# How many times the firmware polls a ready flag before it gives up and stays on the
# reset clock. Oscillator start-up, PLL lock and regulator settling take microseconds
# to a few hundred (datasheets: PLL lock time <= 200-300 us); 200,000 polls of a few
# cycles each take at least 6 ms even from the fastest reset clock (H7's 64 MHz HSI).
WAIT_POLLS = 200_000

AHB_DIVIDERS = (1, 2, 4, 8, 16, 64, 128, 256, 512)  # HPRE: 0xxx = /1, 1000 = /2 ... 1111 = /512
APB_DIVIDERS = (1, 2, 4, 8, 16)  # PPRE: 0xx = /1, 100 = /2 ... 111 = /16


def ahb_code(divider: int) -> int:
    """HPRE / D1CPRE field value for a divider (same encoding in all five manuals)."""
    return 0 if divider == 1 else 0b1000 + AHB_DIVIDERS.index(divider) - 1


def apb_code(divider: int) -> int:
    """PPRE field value for a divider (same encoding in all five manuals)."""
    return 0 if divider == 1 else 0b100 + APB_DIVIDERS.index(divider) - 1


@dataclass(frozen=True)
class WaitState:
    max_hclk_hz: int  # this LATENCY serves HCLK up to and including this frequency
    latency: int  # FLASH_ACR.LATENCY
    wrhighfreq: int = 0  # H7 only: FLASH_ACR.WRHIGHFREQ (programming delay)


@dataclass(frozen=True)
class VoltageRange:
    """One regulator setting: what it allows and the flash latency it needs per HCLK."""

    name: str  # as the manual calls it: "scale 1", "VOS0", "range 1"
    code: int  # value of the VOS field
    sysclk_max_hz: int
    hclk_max_hz: int
    pclk_max_hz: int
    wait_states: tuple[WaitState, ...]  # ascending max_hclk_hz
    overdrive: bool = False  # F7 over-drive (PWR_CR1.ODEN) / H7 VOS0 (SYSCFG_PWRCR.ODEN)
    boost: bool = False  # U5 EPOD booster (PWR_VOSR.BOOSTEN)


@dataclass(frozen=True)
class PllLimits:
    m: range  # input divider
    n: range  # VCO multiplier
    out: tuple[int, ...]  # the SYSCLK output divider: P (F4, F7, H7) or R (L4, U5)
    ref_hz: tuple[int, int]  # VCO input (source / M), inclusive
    vco_hz: tuple[int, int]  # VCO output, inclusive
    out_max_hz: int  # the SYSCLK output
    q: range | None = None  # F4/F7: PLLQ feeds the 48 MHz domain and must be programmed
    q_max_hz: int = 48_000_000
    ref_ranges: tuple[tuple[int, int, int], ...] = ()  # H7/U5 PLLxRGE: (low, high, code)


@dataclass(frozen=True)
class ClockSpec:
    family: str  # F4, F7, H7, L4, U5 (as firmware._STM32_FAMILIES)
    manual: str
    parts: str  # regular expression over the upper-cased mcu: the parts the manual covers
    reset_clock_hz: int  # SYSCLK straight out of reset (HSI or MSI), every prescaler /1
    hsi_hz: int  # the internal oscillator the PLL runs from by default
    hse_bypass_hz: tuple[int, int]  # external clock range accepted in bypass mode
    pll: PllLimits
    ranges: tuple[VoltageRange, ...]  # lowest power first; the first that allows the clock wins
    hclk_dividers: tuple[int, ...]  # AHB prescalers tried, smallest first
    usart_bus: dict[str, str]  # instance -> "apb1"/"apb2": its kernel clock at reset selection
    buses: tuple[str, ...]  # APB buses, each with its own prescaler

    @property
    def sysclk_max_hz(self) -> int:
        return max(r.sysclk_max_hz for r in self.ranges)


def _ws(*rows: tuple) -> tuple[WaitState, ...]:
    return tuple(WaitState(int(mhz * 1_000_000), *rest) for mhz, *rest in rows)


MHZ = 1_000_000

# ---- STM32F411 (RM0383) --------------------------------------------------------------
# §3.4 "Read interface", table "Number of wait states according to CPU clock (HCLK)
# frequency", column 2.7-3.6 V. §5.1.3 / PWR_CR.VOS: scale 3 <= 64 MHz, scale 2 <= 84 MHz,
# scale 1 <= 100 MHz (DS10314 general operating conditions). §6.2: APB1 <= 50 MHz,
# APB2 <= 100 MHz. §6.3.2 RCC_PLLCFGR: 2 <= PLLM <= 63, 50 <= PLLN <= 432, PLLP 2/4/6/8,
# 2 <= PLLQ <= 15; VCO input 1-2 MHz ("2 MHz to limit PLL jitter"), VCO output 100-432 MHz,
# the 48 MHz domain (PLLQ) at most 48 MHz.
_F411_WS = _ws((30, 0), (64, 1), (90, 2), (100, 3))
F411 = ClockSpec(
    family="F4", manual="RM0383", parts=r"STM32F411[0-9A-Z]*",
    reset_clock_hz=16 * MHZ, hsi_hz=16 * MHZ, hse_bypass_hz=(1 * MHZ, 50 * MHZ),
    pll=PllLimits(m=range(2, 64), n=range(50, 433), out=(2, 4, 6, 8), ref_hz=(1 * MHZ, 2 * MHZ),
                  vco_hz=(100 * MHZ, 432 * MHZ), out_max_hz=100 * MHZ, q=range(2, 16)),
    ranges=(
        VoltageRange("scale 3", 0b01, 64 * MHZ, 64 * MHZ, 50 * MHZ, _F411_WS),
        VoltageRange("scale 2", 0b10, 84 * MHZ, 84 * MHZ, 50 * MHZ, _F411_WS),
        VoltageRange("scale 1", 0b11, 100 * MHZ, 100 * MHZ, 50 * MHZ, _F411_WS),
    ),
    hclk_dividers=(1,),
    usart_bus={"USART1": "apb2", "USART2": "apb1", "USART6": "apb2"},  # RM0383 §2.3 memory map
    buses=("apb1", "apb2"),
)
# Buses faster than the range's pclk limit (the APB1 one): APB2 at 100 MHz on the F411
# (RM0383 §6.2) and 108 MHz on the F746 (RM0385 §5.2).
_APB_MAX_HZ = {("F4", "apb2"): 100 * MHZ, ("F7", "apb2"): 108 * MHZ}

# ---- STM32F746 (RM0385) --------------------------------------------------------------
# §3.3.2 "Read access latency", table "Number of wait states according to CPU clock
# (HCLK) frequency", column 2.7-3.6 V: one wait state per 30 MHz, 7 at 210-216 MHz.
# §4.1.4 "Voltage regulator": scale 3 <= 144 MHz, scale 2 <= 168 MHz (180 with
# over-drive), scale 1 <= 180 MHz (216 with over-drive), and the over-drive entry
# sequence (ODEN, ODRDY, ODSWEN, ODSWRDY). §5.2: APB1 <= 54 MHz, APB2 <= 108 MHz.
# §5.3.2 RCC_PLLCFGR: as the F4 (PLLM 2-63, PLLN 50-432, PLLP 2/4/6/8, PLLQ 2-15),
# VCO input 1-2 MHz, VCO output 100-432 MHz.
_F746_WS = _ws((30, 0), (60, 1), (90, 2), (120, 3), (150, 4), (180, 5), (210, 6), (216, 7))
F746 = ClockSpec(
    family="F7", manual="RM0385", parts=r"STM32F7[45]\d[0-9A-Z]*",
    reset_clock_hz=16 * MHZ, hsi_hz=16 * MHZ, hse_bypass_hz=(1 * MHZ, 50 * MHZ),
    pll=PllLimits(m=range(2, 64), n=range(50, 433), out=(2, 4, 6, 8), ref_hz=(1 * MHZ, 2 * MHZ),
                  vco_hz=(100 * MHZ, 432 * MHZ), out_max_hz=216 * MHZ, q=range(2, 16)),
    ranges=(
        VoltageRange("scale 3", 0b01, 144 * MHZ, 144 * MHZ, 54 * MHZ, _F746_WS),
        VoltageRange("scale 2", 0b10, 168 * MHZ, 168 * MHZ, 54 * MHZ, _F746_WS),
        VoltageRange("scale 1", 0b11, 180 * MHZ, 180 * MHZ, 54 * MHZ, _F746_WS),
        VoltageRange("scale 1 + over-drive", 0b11, 216 * MHZ, 216 * MHZ, 54 * MHZ, _F746_WS, overdrive=True),
    ),
    hclk_dividers=(1,),
    # RM0385 §2.2.2 memory map; RCC_DCKCFGR2.USARTxSEL resets to 00 = the APB clock.
    usart_bus={"USART1": "apb2", "USART2": "apb1", "USART3": "apb1", "USART6": "apb2"},
    buses=("apb1", "apb2"),
)

# ---- STM32H743 revision V (RM0433 rev 7) -------------------------------------------
# Table 17 "FLASH recommended number of wait states and programming delay", by AXI
# clock (= HCLK): VOS1 and VOS0 share rows up to 225 MHz; VOS0 adds 4 WS up to 240 MHz.
# DS12110 (revision V) general operating conditions: VOS0 480 MHz CPU / 240 MHz HCLK /
# 120 MHz APB, VOS1 400 / 200 / 100 MHz. VOS2/VOS3 (power saving) are not used: tinyscale
# runs the board at full speed. §8.7.13 RCC_PLLCKSELR: 1 <= DIVM1 <= 63; RCC_PLL1DIVR:
# 4 <= DIVN1 <= 512, DIVP1 even (2-128: odd factors are not allowed for PLL1); RCC_PLLCFGR:
# PLL1RGE 00 1-2 MHz, 01 2-4 MHz, 10 4-8 MHz, 11 8-16 MHz; the wide-range VCO (VCOSEL=0)
# wants ref1_ck of 2-16 MHz and runs 192-960 MHz on revision V (DS12110). Cross-checked:
# the stm32h7xx-hal crate transcribes Table 17 identically, and CircuitPython's STM32H743
# port runs 480 MHz from a 960 MHz VCO (2 MHz x 480 / P 2) at VOS0 with AHB /2.
_H743_WS_VOS1 = _ws((70, 0, 0), (140, 1, 1), (185, 2, 1), (210, 2, 2), (225, 3, 2))
_H743_WS_VOS0 = _H743_WS_VOS1 + _ws((240, 4, 2))
H743 = ClockSpec(
    family="H7", manual="RM0433", parts=r"STM32H7[45][023][0-9A-Z]*",
    reset_clock_hz=64 * MHZ, hsi_hz=64 * MHZ, hse_bypass_hz=(4 * MHZ, 50 * MHZ),
    pll=PllLimits(m=range(1, 64), n=range(4, 513), out=tuple(range(2, 129, 2)), ref_hz=(2 * MHZ, 16 * MHZ),
                  vco_hz=(192 * MHZ, 960 * MHZ), out_max_hz=480 * MHZ,
                  ref_ranges=((1 * MHZ, 2 * MHZ, 0b00), (2 * MHZ, 4 * MHZ, 0b01), (4 * MHZ, 8 * MHZ, 0b10),
                              (8 * MHZ, 16 * MHZ, 0b11))),
    ranges=(
        VoltageRange("VOS1", 0b11, 400 * MHZ, 200 * MHZ, 100 * MHZ, _H743_WS_VOS1),
        VoltageRange("VOS0", 0b11, 480 * MHZ, 240 * MHZ, 120 * MHZ, _H743_WS_VOS0, overdrive=True),
    ),
    hclk_dividers=(1, 2, 4),
    # RCC_D2CCIP2R: USART16SEL and USART234578SEL reset to 000 = rcc_pclk2 / rcc_pclk1.
    usart_bus={"USART1": "apb2", "USART2": "apb1", "USART3": "apb1"},
    buses=("apb1", "apb2", "apb3", "apb4"),
)

# ---- STM32L476 (RM0351) --------------------------------------------------------------
# §3.3.3 "Read access latency", table "Number of wait states according to HCLK
# frequency": range 1 <= 16/32/48/64/80 MHz for 0-4 WS, range 2 <= 6/12/18/26 MHz for 0-3.
# §5.1.8 "Dynamic voltage scaling": range 1 up to 80 MHz, range 2 up to 26 MHz.
# §6.4.4 RCC_PLLCFGR: PLLM 1-8, PLLN 8-86, PLLR 2/4/6/8; VCO input 4-16 MHz, VCO output
# 64-344 MHz, PLLR output (SYSCLK) <= 80 MHz. APB1/APB2 up to 80 MHz. Cross-checked: ST's
# LL driver (stm32l4xx_ll_utils.c) states the same wait-state table and PLL limits.
L476 = ClockSpec(
    family="L4", manual="RM0351", parts=r"STM32L4(71|75|76|85|86|96|A6)[0-9A-Z]*",
    reset_clock_hz=4 * MHZ, hsi_hz=16 * MHZ, hse_bypass_hz=(4 * MHZ, 48 * MHZ),
    pll=PllLimits(m=range(1, 9), n=range(8, 87), out=(2, 4, 6, 8), ref_hz=(4 * MHZ, 16 * MHZ),
                  vco_hz=(64 * MHZ, 344 * MHZ), out_max_hz=80 * MHZ),
    ranges=(
        VoltageRange("range 2", 0b10, 26 * MHZ, 26 * MHZ, 26 * MHZ, _ws((6, 0), (12, 1), (18, 2), (26, 3))),
        VoltageRange("range 1", 0b01, 80 * MHZ, 80 * MHZ, 80 * MHZ,
                     _ws((16, 0), (32, 1), (48, 2), (64, 3), (80, 4))),
    ),
    hclk_dividers=(1,),
    # RM0351 §2.2.2 memory map; RCC_CCIPR.USARTxSEL resets to 00 = PCLK.
    usart_bus={"USART1": "apb2", "USART2": "apb1", "USART3": "apb1"},
    buses=("apb1", "apb2"),
)

# ---- STM32U585 (RM0456) --------------------------------------------------------------
# §7.3.3 "Read access latency", table "Number of wait states according to CPU clock
# (HCLK) frequency (LPM=0)", as ST's LL driver encodes it (stm32u5xx_ll_utils.c,
# UTILS_SCALEx_LATENCYy_FREQ): range 1 <= 32/64/96/128/160 MHz for 0-4 WS, range 2
# <= 25/50/75/100, range 3 <= 12.5/25/37.5/50, range 4 <= 8/16/24. The regulator allows
# range 1 160 MHz, 2 110 MHz, 3 55 MHz, 4 25 MHz (§10.5.4 "Dynamic voltage scaling";
# the LL's UTILS_MAX_FREQUENCY_SCALEx); where a range's table stops lower, the planner
# takes the next range up. Ranges 1 and 2 need the EPOD booster (HAL_PWREx_ControlVoltageScaling:
# "EPOD must be enabled before switching to voltage scale 1 / 2"), clocked from PLL1's
# source through PLL1MBOOST. RCC_PLL1CFGR / RCC_PLL1DIVR: PLL1M 1-16, PLL1N 4-512,
# PLL1R 1-128 (even factors used here, as ST's own set-ups do: OpenOCD's stm32u5x.cfg
# divides by 2); PLL1RGE 00 4-8 MHz, 11 8-16 MHz (HAL's RCC_PLLVCIRANGE_0/1); VCO input
# 4-16 MHz; VCO output 128-344 MHz, where DS13086's range and the LL's UTILS_PLLVCO_OUTPUT
# limits overlap.
U585 = ClockSpec(
    family="U5", manual="RM0456", parts=r"STM32U5[0-9A-Z]*",
    reset_clock_hz=4 * MHZ, hsi_hz=16 * MHZ, hse_bypass_hz=(4 * MHZ, 50 * MHZ),
    pll=PllLimits(m=range(1, 17), n=range(4, 513), out=tuple(range(2, 129, 2)), ref_hz=(4 * MHZ, 16 * MHZ),
                  vco_hz=(128 * MHZ, 344 * MHZ), out_max_hz=160 * MHZ,
                  ref_ranges=((4 * MHZ, 8 * MHZ, 0b00), (8 * MHZ, 16 * MHZ, 0b11))),
    ranges=(
        VoltageRange("range 4", 0b00, 25 * MHZ, 25 * MHZ, 25 * MHZ, _ws((8, 0), (16, 1), (24, 2))),
        VoltageRange("range 3", 0b01, 55 * MHZ, 55 * MHZ, 55 * MHZ, _ws((12.5, 0), (25, 1), (37.5, 2), (50, 3))),
        VoltageRange("range 2", 0b10, 110 * MHZ, 110 * MHZ, 110 * MHZ,
                     _ws((25, 0), (50, 1), (75, 2), (100, 3)), boost=True),
        VoltageRange("range 1", 0b11, 160 * MHZ, 160 * MHZ, 160 * MHZ,
                     _ws((32, 0), (64, 1), (96, 2), (128, 3), (160, 4)), boost=True),
    ),
    hclk_dividers=(1,),
    # RM0456 memory map; RCC_CCIPR1.USARTxSEL resets to 00 = PCLK.
    usart_bus={"USART1": "apb2", "USART2": "apb1", "USART3": "apb1"},
    buses=("apb1", "apb2"),
)

CLOCK_SPECS: tuple[ClockSpec, ...] = (F411, F746, H743, L476, U585)


def find_spec(mcu: str | None) -> ClockSpec | None:
    """The clock data for a part number, or None for a chip whose manual is not tabulated."""
    if not mcu:
        return None
    return next((spec for spec in CLOCK_SPECS if re.fullmatch(spec.parts, mcu.upper())), None)


# ---------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class PllSetting:
    source: str  # "hsi" or "hse-bypass"
    source_hz: int
    m: int
    n: int
    out: int  # P (F4/F7/H7) or R (L4/U5)
    q: int | None  # F4/F7 only

    def ref_hz(self) -> Fraction:
        return Fraction(self.source_hz, self.m)

    def vco_hz(self) -> Fraction:
        return self.ref_hz() * self.n

    def output_hz(self) -> Fraction:
        return self.vco_hz() / self.out


@dataclass(frozen=True)
class ClockPlan:
    """Everything the firmware needs to run `family` at `sysclk_hz` and know it."""

    spec: ClockSpec
    requested_hz: int
    pll: PllSetting
    sysclk_hz: int
    exact: bool  # False: the closest frequency below the request
    voltage: VoltageRange
    wait_state: WaitState
    hclk_divider: int
    hclk_hz: int
    apb_dividers: dict[str, int]
    apb_hz: dict[str, int]

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def reset_clock_hz(self) -> int:
        return self.spec.reset_clock_hz

    @property
    def systick_hz(self) -> int:
        """SysTick counts the processor clock: HCLK, or on the H7 the D1CPRE output (sys_ck / 1)."""
        return self.sysclk_hz if self.family == "H7" else self.hclk_hz

    def usart_clock_hz(self, instance: str) -> int:
        return self.apb_hz[self.spec.usart_bus[instance]]

    def summary(self) -> str:
        pll = self.pll
        return (f"{self.sysclk_hz} Hz from {pll.source.upper()} {pll.source_hz} Hz: M={pll.m} N={pll.n} "
                f"{'P' if self.family in ('F4', 'F7', 'H7') else 'R'}={pll.out}, VCO {int(pll.vco_hz())} Hz, "
                f"{self.voltage.name}, {self.wait_state.latency} flash wait states")


def _in(value: Fraction | int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _pll_candidates(limits: PllLimits, source: str, source_hz: int, target_hz: int):
    """Every valid (M, N, out) whose output is at most `target_hz`: for each M and output
    divider the largest N that does not overshoot (the only N that can be closest)."""
    for m in limits.m:
        ref = Fraction(source_hz, m)
        if not _in(ref, limits.ref_hz):
            continue
        for out in limits.out:
            n = min(int(Fraction(target_hz * out) / ref), limits.n.stop - 1)
            if n not in limits.n or not _in(ref * n, limits.vco_hz) or ref * n / out > limits.out_max_hz:
                continue
            yield PllSetting(source, source_hz, m, n, out, _pll_q(limits, ref * n))


def _pll_q(limits: PllLimits, vco_hz: Fraction) -> int | None:
    """F4/F7: the smallest PLLQ that keeps the 48 MHz domain at or below its maximum."""
    if limits.q is None:
        return None
    return next(q for q in limits.q if vco_hz / q <= limits.q_max_hz)


def _preference(setting: PllSetting) -> tuple:
    # Closest to the request first; then the highest VCO input (RM0383 §6.3.2: a higher
    # input frequency limits PLL jitter), then the lowest VCO (less power), then the
    # smallest divider: one deterministic answer.
    return (-setting.output_hz(), -setting.ref_hz(), setting.vco_hz(), setting.out)


def best_pll(spec: ClockSpec, target_hz: int, source: str = "hsi", hse_hz: int | None = None) -> PllSetting:
    source_hz = _source_hz(spec, source, hse_hz)
    candidates = list(_pll_candidates(spec.pll, source, source_hz, target_hz))
    if not candidates:
        lowest = spec.pll.vco_hz[0] // max(spec.pll.out)
        raise TargetError(f"{spec.family} ({spec.manual}): no PLL setting reaches {target_hz} Hz or just below it "
                          f"from {source.upper()} {source_hz} Hz (the PLL's lowest output is about {lowest} Hz)")
    return min(candidates, key=_preference)


def _source_hz(spec: ClockSpec, source: str, hse_hz: int | None) -> int:
    if source == "hsi":
        return spec.hsi_hz
    if source != "hse-bypass":
        raise TargetError(f"clock source {source!r} is not one of hsi, hse-bypass")
    if hse_hz is None or not _in(hse_hz, spec.hse_bypass_hz):
        low, high = spec.hse_bypass_hz
        raise TargetError(f"{spec.family} ({spec.manual}): an HSE bypass clock must be {low}-{high} Hz, got {hse_hz}")
    return hse_hz


def voltage_range(spec: ClockSpec, sysclk_hz: int) -> VoltageRange:
    """The lowest-power regulator setting that allows the clock and whose wait-state
    table covers the HCLK it gives."""
    def allows(r: VoltageRange) -> bool:
        if sysclk_hz > r.sysclk_max_hz:
            return False
        hclk = sysclk_hz / _divider(sysclk_hz, r.hclk_max_hz, spec.hclk_dividers)
        return hclk <= r.wait_states[-1].max_hclk_hz
    return next(r for r in spec.ranges if allows(r))


def wait_state(voltage: VoltageRange, hclk_hz: int) -> WaitState:
    """The fewest flash wait states the manual's table allows at this HCLK."""
    for row in voltage.wait_states:
        if hclk_hz <= row.max_hclk_hz:
            return row
    raise TargetError(f"HCLK {hclk_hz} Hz is above the {voltage.name} wait-state table")


def _divider(clock_hz: int, maximum_hz: int, dividers: tuple[int, ...]) -> int:
    """The smallest prescaler that keeps a bus within its maximum."""
    return next(d for d in dividers if clock_hz / d <= maximum_hz)


def check_request(spec: ClockSpec, clock_hz: int) -> None:
    if clock_hz > spec.sysclk_max_hz:
        raise TargetError(f"clock_hz {clock_hz} is above {spec.sysclk_max_hz} Hz, the most {spec.manual} and its "
                          f"datasheet allow this chip; use at most {spec.sysclk_max_hz}")


def plan_clock(spec: ClockSpec, clock_hz: int, source: str = "hsi", hse_hz: int | None = None) -> ClockPlan:
    """The PLL, voltage range, flash latency and prescalers for `clock_hz` (or the closest below)."""
    check_request(spec, clock_hz)
    pll = best_pll(spec, clock_hz, source, hse_hz)
    sysclk = int(pll.output_hz())  # a fraction only when inexact; the firmware works in whole Hz
    voltage = voltage_range(spec, sysclk)
    hclk_divider = _divider(sysclk, voltage.hclk_max_hz, spec.hclk_dividers)
    hclk = sysclk // hclk_divider
    apb_dividers = {bus: _divider(hclk, _APB_MAX_HZ.get((spec.family, bus), voltage.pclk_max_hz), APB_DIVIDERS)
                    for bus in spec.buses}
    exact = pll.output_hz() == clock_hz
    plan = ClockPlan(spec, clock_hz, pll, sysclk, exact, voltage, wait_state(voltage, hclk), hclk_divider, hclk,
                     apb_dividers, {bus: hclk // d for bus, d in apb_dividers.items()})
    if not exact:
        log.warning("STM32%s: no PLL setting gives exactly %d Hz; using the closest below, %d Hz",
                    spec.family, clock_hz, sysclk)
    return plan


def clock_source(hse_bypass_hz: int | None) -> str:
    """HSI unless the board file names an external clock: the internal oscillator needs no
    solder bridge or jumper to be right, so it is the safe default."""
    return "hsi" if hse_bypass_hz is None else "hse-bypass"


def check_target_clock(mcu: str | None, clock_hz: int, hse_bypass_hz: int | None = None) -> None:
    """For a part whose manual is tabulated here: raise TargetError unless `clock_hz` can be set up."""
    spec = find_spec(mcu)
    if spec is None:
        if hse_bypass_hz is not None:
            raise TargetError("hse_bypass_hz is only for the STM32 parts tinyscale has clock-tree data for "
                              f"({', '.join(s.manual for s in CLOCK_SPECS)})")
        return
    check_request(spec, clock_hz)
    best_pll(spec, clock_hz, clock_source(hse_bypass_hz), hse_bypass_hz)


def uart_brr(kernel_clock_hz: int, baud: int) -> int:
    """USARTx_BRR for 16x oversampling: the kernel clock over the baud rate, rounded (every
    manual's "USART baud rate generation"; v1 USARTs read the same value as 12.4 fixed point)."""
    return (kernel_clock_hz + baud // 2) // baud


# ---------------------------------------------------------------------------------------
# The register program


@dataclass(frozen=True)
class Step:
    """One register operation of the clock set-up, rendered as one line of C.

    modify: register = (register & ~mask) | value.
    wait:   poll until (register & mask) == value, at most WAIT_POLLS times; on a timeout
            the firmware gives up with `reason` and stays on (or returns to) the reset clock.
    """

    kind: str
    address: int
    mask: int
    value: int
    comment: str
    reason: str = ""


def _modify(address: int, mask: int, value: int, comment: str) -> Step:
    assert value & ~mask == 0, comment
    return Step("modify", address, mask, value, comment)


def _set(address: int, bit: int, comment: str) -> Step:
    return _modify(address, 1 << bit, 1 << bit, comment)


def _wait(address: int, mask: int, value: int, reason: str) -> Step:
    return Step("wait", address, mask, value, "", reason)


def _wait_set(address: int, bit: int, reason: str) -> Step:
    return _wait(address, 1 << bit, 1 << bit, reason)


@dataclass(frozen=True)
class ClockProgram:
    """prepare: nothing the running clocks depend on changes, so a failed wait leaves the
    chip on its reset clock. switch: prescalers and SYSCLK; a failed wait there runs
    `restore` (the switch and prescaler fields back to their reset values)."""

    prepare: tuple[Step, ...]
    switch: tuple[Step, ...]
    restore: tuple[Step, ...]


def _field(value: int, shift: int) -> int:
    return value << shift


def _flash_steps(address: int, latency_mask: int, plan: ClockPlan, extra_mask: int, extra_value: int) -> list[Step]:
    """Wait states (and the family's prefetch/cache bits) before the clock goes up, read
    back as every manual asks ("check that the new number of wait states is taken into account")."""
    latency = plan.wait_state.latency
    return [
        _modify(address, latency_mask | extra_mask, latency | extra_value,
                f"FLASH_ACR: {latency} wait states for HCLK {plan.hclk_hz} Hz ({plan.voltage.name})"),
        _wait(address, latency_mask, latency, "flash latency not accepted"),
    ]


def _source_steps(rcc_cr: int, plan: ClockPlan, hsi_on: int, hsi_ready: int) -> list[Step]:
    if plan.pll.source == "hsi":
        return [_set(rcc_cr, hsi_on, "RCC_CR.HSION"), _wait_set(rcc_cr, hsi_ready, "HSI did not start")]
    # HSE in bypass mode: the ST-LINK's MCO drives OSC_IN (RCC_CR: HSEON bit 16, HSERDY 17, HSEBYP 18).
    return [_modify(rcc_cr, (1 << 16) | (1 << 18), (1 << 16) | (1 << 18), "RCC_CR.HSEBYP | HSEON"),
            _wait_set(rcc_cr, 17, "HSE did not start")]


def _f4_pllcfgr(plan: ClockPlan) -> Step:
    pll = plan.pll
    mask = 0x3F | _field(0x1FF, 6) | _field(3, 16) | _field(1, 22) | _field(0xF, 24)
    value = pll.m | _field(pll.n, 6) | _field(pll.out // 2 - 1, 16) | _field(pll.source != "hsi", 22) | _field(pll.q, 24)
    return _modify(0x40023804, mask, value, f"RCC_PLLCFGR: M={pll.m} N={pll.n} P={pll.out} Q={pll.q}")


def _cfgr_f4_switch(plan: ClockPlan, cfgr: int, sw_pll: int) -> tuple[list[Step], list[Step]]:
    """RCC_CFGR on F4/F7/L4: HPRE 7:4, PPRE1, PPRE2, SW 1:0 / SWS 3:2. PPRE1/PPRE2 sit at
    12:10 / 15:13 on the F4/F7 and at 10:8 / 13:11 on the L4."""
    ppre1, ppre2 = (10, 13) if plan.family in ("F4", "F7") else (8, 11)
    d = plan.apb_dividers
    mask = _field(0xF, 4) | _field(7, ppre1) | _field(7, ppre2)
    value = _field(ahb_code(plan.hclk_divider), 4) | _field(apb_code(d["apb1"]), ppre1) | _field(apb_code(d["apb2"]), ppre2)
    switch = [
        _modify(cfgr, mask, value, f"RCC_CFGR: AHB /{plan.hclk_divider}, APB1 /{d['apb1']}, APB2 /{d['apb2']}"),
        _modify(cfgr, 3, sw_pll, "RCC_CFGR.SW = PLL"),
        _wait(cfgr, 0xC, sw_pll << 2, "switch to the PLL not confirmed"),
    ]
    return switch, [_modify(cfgr, mask | 3, 0, "RCC_CFGR back to its reset clock and prescalers")]


_F4_RCC_CR, _F4_PWR_CR, _F4_PWR_CSR = 0x40023800, 0x40007000, 0x40007004  # same map on the F4 and F7


def _f4_f7_pll_on(plan: ClockPlan, pwr_cr_name: str) -> list[Step]:
    """PWR clock, VOS, oscillator, PLL configured and started: the F4 and F7 share the
    register map (RCC at 0x40023800, PWR at 0x40007000)."""
    return [
        _set(0x40023840, 28, "RCC_APB1ENR.PWREN"),
        _wait_set(0x40023840, 28, "PWR clock did not start"),
        _modify(_F4_PWR_CR, _field(3, 14), _field(plan.voltage.code, 14), f"{pwr_cr_name}.VOS = {plan.voltage.name}"),
        *_source_steps(_F4_RCC_CR, plan, 0, 1),
        _f4_pllcfgr(plan),
        _set(_F4_RCC_CR, 24, "RCC_CR.PLLON"),
    ]


def _program_f4(plan: ClockPlan) -> ClockProgram:
    # RM0383 §6.3 (RCC at 0x40023800), §5.4 (PWR at 0x40007000), §3.8 (FLASH at 0x40023C00).
    rcc_cr, pwr_csr = _F4_RCC_CR, _F4_PWR_CSR
    prepare = [
        *_f4_f7_pll_on(plan, "PWR_CR"),
        _wait_set(rcc_cr, 25, "PLL did not lock"),
        _wait_set(pwr_csr, 14, "voltage scaling not ready"),  # VOSRDY is valid once the PLL runs
        # PRFTEN, ICEN, DCEN (bits 8-10): the ART accelerator, as ST's examples enable it
        *_flash_steps(0x40023C00, 0xF, plan, _field(7, 8), _field(7, 8)),
    ]
    switch, restore = _cfgr_f4_switch(plan, 0x40023808, 0b10)
    return ClockProgram(tuple(prepare), tuple(switch), tuple(restore))


def _program_f7(plan: ClockPlan) -> ClockProgram:
    # RM0385 §5.3 (RCC at 0x40023800), §4.4 (PWR at 0x40007000), §3.7 (FLASH at 0x40023C00);
    # the order is §4.1.4's "Entering Over-drive mode": PLL on, over-drive, latency, lock, switch.
    rcc_cr, pwr_cr1, pwr_csr1 = _F4_RCC_CR, _F4_PWR_CR, _F4_PWR_CSR
    prepare = _f4_f7_pll_on(plan, "PWR_CR1")
    if plan.voltage.overdrive:
        prepare += [
            _set(pwr_cr1, 16, "PWR_CR1.ODEN"),
            _wait_set(pwr_csr1, 16, "over-drive not ready"),
            _set(pwr_cr1, 17, "PWR_CR1.ODSWEN"),
            _wait_set(pwr_csr1, 17, "over-drive switch not ready"),
        ]
    # PRFTEN (bit 8) and ARTEN (bit 9): the ART accelerator on the AXIM flash interface
    prepare += [*_flash_steps(0x40023C00, 0xF, plan, _field(3, 8), _field(3, 8)),
                _wait_set(rcc_cr, 25, "PLL did not lock"),
                _wait_set(pwr_csr1, 14, "voltage scaling not ready")]
    switch, restore = _cfgr_f4_switch(plan, 0x40023808, 0b10)
    return ClockProgram(tuple(prepare), tuple(switch), tuple(restore))


def _program_h7(plan: ClockPlan) -> ClockProgram:
    # RM0433 §8.7 (RCC at 0x58024400), §6.8 (PWR at 0x58024800), §12.3 (SYSCFG at 0x58000400),
    # §4.9 (FLASH at 0x52002000); the supply and VOS sequence of §6.6.2 "Voltage scaling".
    rcc, pwr = 0x58024400, 0x58024800
    pll, d = plan.pll, plan.apb_dividers
    rge = next(code for low, high, code in plan.spec.pll.ref_ranges if low <= pll.ref_hz() <= high)
    prepare = [
        # The NUCLEO-H743ZI2 powers the core from the LDO (UM2407): CR3's supply bits are
        # write-once after power-on, so write them once with the LDO alone (as ST's HAL does).
        _modify(pwr + 0x0C, 0x7, 0x2, "PWR_CR3: LDOEN, no bypass, SCUEN cleared"),
        _wait_set(pwr + 0x04, 13, "supply not ready"),  # PWR_CSR1.ACTVOSRDY
        _modify(pwr + 0x18, _field(3, 14), _field(plan.voltage.code, 14), "PWR_D3CR.VOS = VOS1"),
        _wait_set(pwr + 0x18, 13, "voltage scaling not ready"),  # PWR_D3CR.VOSRDY
    ]
    if plan.voltage.overdrive:
        prepare += [
            _set(rcc + 0xF4, 1, "RCC_APB4ENR.SYSCFGEN"),
            _wait_set(rcc + 0xF4, 1, "SYSCFG clock did not start"),
            _set(0x5800042C, 0, "SYSCFG_PWRCR.ODEN: VOS0"),
            _wait_set(pwr + 0x18, 13, "VOS0 not ready"),
        ]
    prepare += [
        *_source_steps(rcc, plan, 0, 2),
        _modify(rcc + 0x28, 0x3 | _field(0x3F, 4), (0 if pll.source == "hsi" else 0b10) | _field(pll.m, 4),
                f"RCC_PLLCKSELR: DIVM1 = {pll.m}"),
        # wide VCO (VCOSEL=0), integer mode, only the P output enabled (DIVP1EN)
        _modify(rcc + 0x2C, 0x3 | _field(3, 2) | _field(7, 16), _field(rge, 2) | _field(1, 16),
                f"RCC_PLLCFGR: PLL1RGE for {int(pll.ref_hz())} Hz, wide VCO, DIVP1EN"),
        _modify(rcc + 0x30, 0x1FF | _field(0x7F, 9), (pll.n - 1) | _field(pll.out - 1, 9),
                f"RCC_PLL1DIVR: N={pll.n} P={pll.out}"),
        _set(rcc, 24, "RCC_CR.PLL1ON"),
        _wait_set(rcc, 25, "PLL did not lock"),
        _modify(0x52002000, 0xF | _field(3, 4), plan.wait_state.latency | _field(plan.wait_state.wrhighfreq, 4),
                f"FLASH_ACR: {plan.wait_state.latency} wait states, WRHIGHFREQ {plan.wait_state.wrhighfreq} "
                f"for AXI clock {plan.hclk_hz} Hz ({plan.voltage.name})"),
        _wait(0x52002000, 0xF, plan.wait_state.latency, "flash latency not accepted"),
    ]
    d1_mask = 0xF | _field(7, 4) | _field(0xF, 8)
    d2_mask = _field(7, 4) | _field(7, 8)
    switch = [
        _modify(rcc + 0x18, d1_mask, ahb_code(plan.hclk_divider) | _field(apb_code(d["apb3"]), 4),
                f"RCC_D1CFGR: D1CPRE /1, HPRE /{plan.hclk_divider}, D1PPRE /{d['apb3']}"),
        _modify(rcc + 0x1C, d2_mask, _field(apb_code(d["apb1"]), 4) | _field(apb_code(d["apb2"]), 8),
                f"RCC_D2CFGR: D2PPRE1 /{d['apb1']}, D2PPRE2 /{d['apb2']}"),
        _modify(rcc + 0x20, _field(7, 4), _field(apb_code(d["apb4"]), 4), f"RCC_D3CFGR: D3PPRE /{d['apb4']}"),
        _modify(rcc + 0x10, 0x7, 0b011, "RCC_CFGR.SW = PLL1"),
        _wait(rcc + 0x10, _field(7, 3), _field(0b011, 3), "switch to the PLL not confirmed"),
    ]
    restore = [
        _modify(rcc + 0x10, 0x7, 0, "RCC_CFGR.SW back to HSI"),
        _modify(rcc + 0x18, d1_mask, 0, "RCC_D1CFGR back to /1"),
        _modify(rcc + 0x1C, d2_mask, 0, "RCC_D2CFGR back to /1"),
        _modify(rcc + 0x20, _field(7, 4), 0, "RCC_D3CFGR back to /1"),
    ]
    return ClockProgram(tuple(prepare), tuple(switch), tuple(restore))


def _program_l4(plan: ClockPlan) -> ClockProgram:
    # RM0351 §6.4 (RCC at 0x40021000), §5.4 (PWR at 0x40007000), §3.7 (FLASH at 0x40022000).
    rcc_cr, pll = 0x40021000, plan.pll
    src = 0b10 if pll.source == "hsi" else 0b11
    pll_mask = 0x3 | _field(7, 4) | _field(0x7F, 8) | _field(1, 16) | _field(1, 20) | _field(1, 24) | _field(3, 25)
    pll_value = src | _field(pll.m - 1, 4) | _field(pll.n, 8) | _field(1, 24) | _field(pll.out // 2 - 1, 25)
    prepare = [
        _set(0x40021058, 28, "RCC_APB1ENR1.PWREN"),
        _wait_set(0x40021058, 28, "PWR clock did not start"),
        _modify(0x40007000, _field(3, 9), _field(plan.voltage.code, 9), f"PWR_CR1.VOS = {plan.voltage.name}"),
        _wait(0x40007014, 1 << 10, 0, "voltage scaling not ready"),  # PWR_SR2.VOSF clears when settled
        *_source_steps(rcc_cr, plan, 8, 10),
        _modify(0x4002100C, pll_mask, pll_value, f"RCC_PLLCFGR: M={pll.m} N={pll.n} R={pll.out}, PLLREN"),
        _set(rcc_cr, 24, "RCC_CR.PLLON"),
        _wait_set(rcc_cr, 25, "PLL did not lock"),
        # PRFTEN, ICEN, DCEN (bits 8-10): the ART accelerator
        *_flash_steps(0x40022000, 0x7, plan, _field(7, 8), _field(7, 8)),
    ]
    switch, restore = _cfgr_f4_switch(plan, 0x40021008, 0b11)
    return ClockProgram(tuple(prepare), tuple(switch), tuple(restore))


_MBOOST_DIVIDERS = (1, 2, 4, 6, 8, 10, 12, 14, 16)  # RCC_PLL1CFGR.PLL1MBOOST codes 0-8
EPOD_MAX_HZ = 16 * MHZ


def mboost_code(source_hz: int) -> int:
    """PLL1MBOOST: the smallest prescaler that brings the EPOD booster clock to 16 MHz or below."""
    return next(code for code, div in enumerate(_MBOOST_DIVIDERS) if source_hz / div <= EPOD_MAX_HZ)


def _program_u5(plan: ClockPlan) -> ClockProgram:
    # RM0456 §11.8 (RCC at 0x46020C00), §10.10 (PWR at 0x46020800), §7.9 (FLASH at 0x40022000),
    # non-secure aliases (as OpenOCD's tcl/target/stm32u5x.cfg writes them). Order after ST's
    # HAL: PLL1MBOOST is written while BOOSTEN is clear (HAL_RCC_OscConfig), the booster is
    # enabled with the range (HAL_PWREx_ControlVoltageScaling) and ready before the switch
    # (HAL_RCC_ClockConfig); the latency goes up before the clock does.
    rcc, vosr, pll = 0x46020C00, 0x4602080C, plan.pll
    rge = next(code for low, high, code in plan.spec.pll.ref_ranges if low <= pll.ref_hz() <= high)
    src = 0b10 if pll.source == "hsi" else 0b11
    cfg_mask = 0x3 | _field(3, 2) | _field(1, 4) | _field(0xF, 8) | _field(0xF, 12) | _field(7, 16)
    cfg_value = src | _field(rge, 2) | _field(pll.m - 1, 8) | _field(mboost_code(pll.source_hz), 12) | _field(1, 18)
    boost = _field(plan.voltage.boost, 18)  # PWR_VOSR.BOOSTEN
    prepare = [
        _set(rcc + 0x94, 2, "RCC_AHB3ENR.PWREN"),
        _wait_set(rcc + 0x94, 2, "PWR clock did not start"),
        *_source_steps(rcc, plan, 8, 10),
        _modify(rcc + 0x28, cfg_mask, cfg_value, f"RCC_PLL1CFGR: M={pll.m}, PLL1RGE, PLL1MBOOST, PLL1REN"),
        _modify(vosr, _field(3, 16) | _field(1, 18), _field(plan.voltage.code, 16) | boost,
                f"PWR_VOSR.VOS = {plan.voltage.name}{', BOOSTEN' if boost else ''}"),
        _wait_set(vosr, 15, "voltage scaling not ready"),
        *([_wait_set(vosr, 14, "EPOD booster not ready")] if boost else []),
        # PRFTEN (bit 8)
        *_flash_steps(0x40022000, 0xF, plan, _field(1, 8), _field(1, 8)),
        _modify(rcc + 0x34, 0x1FF | _field(0x7F, 24), (pll.n - 1) | _field(pll.out - 1, 24),
                f"RCC_PLL1DIVR: N={pll.n} R={pll.out}"),
        _set(rcc, 24, "RCC_CR.PLL1ON"),
        _wait_set(rcc, 25, "PLL did not lock"),
    ]
    d = plan.apb_dividers
    cfgr2_mask = 0xF | _field(7, 4) | _field(7, 8)
    cfgr2 = ahb_code(plan.hclk_divider) | _field(apb_code(d["apb1"]), 4) | _field(apb_code(d["apb2"]), 8)
    switch = [
        _modify(rcc + 0x20, cfgr2_mask, cfgr2, f"RCC_CFGR2: AHB /{plan.hclk_divider}, APB1 /{d['apb1']}, "
                                               f"APB2 /{d['apb2']}"),
        _modify(rcc + 0x1C, 0x3, 0b11, "RCC_CFGR1.SW = PLL1"),
        _wait(rcc + 0x1C, 0xC, 0xC, "switch to the PLL not confirmed"),
    ]
    restore = [_modify(rcc + 0x1C, 0x3, 0, "RCC_CFGR1.SW back to MSIS"),
               _modify(rcc + 0x20, cfgr2_mask, 0, "RCC_CFGR2 back to /1")]
    return ClockProgram(tuple(prepare), tuple(switch), tuple(restore))


_PROGRAMS = {"F4": _program_f4, "F7": _program_f7, "H7": _program_h7, "L4": _program_l4, "U5": _program_u5}


def clock_program(plan: ClockPlan) -> ClockProgram:
    return _PROGRAMS[plan.family](plan)
