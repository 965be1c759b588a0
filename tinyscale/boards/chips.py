"""The cpus, fpus and chips a board file may name, and what each chip implies.

A board's `board` label is free text for people; the build systems need the
chip itself: the STM32 family picks the UART register glue, the nRF52840 the
Arduino core, the RP2040 the Pico SDK board. So the chip is its own key
(`mcu`), matched here by part number, and its core must agree with `cpu`.
Pure data: no TensorFlow, no templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# IDF targets (`idf.py set-target`) the esp-idf template sets a CPU frequency for and
# espressif/esp-tflite-micro builds for.
ESP_IDF_CPUS = ("esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6")
# gcc -mcpu names of the Cortex-M cores whose CMSIS-NN scratch sizes tinyscale.boards.kernels
# models (the DSP-extension formulas, the pure-C paths and, on the M55, the MVE/Helium
# ones) and that TFLM's cortex_m_generic target builds for. The M85 is not listed:
# no bundled board or emulator here runs one.
CORTEX_M_CPUS = ("cortex-m0", "cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")
# gcc -mfpu values each core's optional FPU takes (Arm's Cortex-M technical reference
# manuals: M4 FPv4-SP, M7 FPv5 single or double precision, M33 FPv5-SP, M55 FPv5 with
# double precision beside MVE; gcc 12 keeps -mcpu=cortex-m55's MVE with -mfpu=fpv5-d16,
# __ARM_FEATURE_MVE 3); the M0, M0+ and M3 have none.
CPU_FPUS: dict[str, tuple[str, ...]] = {
    "cortex-m4": ("fpv4-sp-d16",),
    "cortex-m7": ("fpv5-sp-d16", "fpv5-d16"),
    "cortex-m33": ("fpv5-sp-d16",),
    "cortex-m55": ("fpv5-d16",),
}
# The cpus each build system's templates are written for.
BUILD_SYSTEM_CPUS: dict[str, tuple[str, ...]] = {
    "esp-idf": ESP_IDF_CPUS,
    "cmake-arm": CORTEX_M_CPUS,
    "arduino": CORTEX_M_CPUS,
    "pico-sdk": CORTEX_M_CPUS,
}
# The cpus each kernel library has optimized kernels for ("reference" runs anywhere).
KERNEL_LIBRARY_CPUS: dict[str, tuple[str, ...]] = {
    "cmsis-nn": CORTEX_M_CPUS,
    "esp-nn": ESP_IDF_CPUS,
}


@dataclass(frozen=True)
class Chip:
    """A chip family: every part number `pattern` matches has this core and FPU."""

    family: str  # what the build glue is keyed by: "STM32L4", "nRF52840", "RP2040", "ESP32-S3"
    pattern: str  # regular expression, matched in full against the upper-cased `mcu`
    cpu: str
    fpus: tuple[str, ...] = ()  # the gcc -mfpu values its FPU takes; () for none
    qemu_machine: str | None = None  # the `qemu-system-arm -M` board that emulates it, for FPGA images

    def matches(self, mcu: str) -> bool:
        return re.fullmatch(self.pattern, mcu.upper()) is not None


# Part numbers after the vendors' ordering-information schemes: STM32 datasheets
# ("STM32 F 411 R E" = family, line, pin count, flash size, ...), Nordic's
# nRF52840-QIAA, Espressif's ESP32-S3R8 / ESP32-C3FN4, Raspberry Pi's RP2040.
CHIPS: tuple[Chip, ...] = (
    Chip("STM32F4", r"STM32F4\d\d[0-9A-Z]*", "cortex-m4", ("fpv4-sp-d16",)),  # DS10314 and siblings
    Chip("STM32F7", r"STM32F7[2-5]\d[0-9A-Z]*", "cortex-m7", ("fpv5-sp-d16",)),  # DS10916: single precision
    Chip("STM32F7", r"STM32F7[67]\d[0-9A-Z]*", "cortex-m7", ("fpv5-sp-d16", "fpv5-d16")),  # F76x/F77x: double
    Chip("STM32H7", r"STM32H7[0-9A-Z]\d[0-9A-Z]*", "cortex-m7", ("fpv5-sp-d16", "fpv5-d16")),  # DS12110
    Chip("STM32L4", r"STM32L4[0-9A-Z]\d[0-9A-Z]*", "cortex-m4", ("fpv4-sp-d16",)),  # DS10198
    Chip("STM32U5", r"STM32U5\d\d[0-9A-Z]*", "cortex-m33", ("fpv5-sp-d16",)),  # DS13086
    Chip("nRF52840", r"NRF52840(-[0-9A-Z]+)?", "cortex-m4", ("fpv4-sp-d16",)),  # nRF52840 PS
    Chip("RP2040", r"RP2040", "cortex-m0plus"),  # RP2040 datasheet
    # Arm's MPS2/MPS3 FPGA images (application notes AN386, AN500, AN505, AN547), as QEMU emulates them.
    Chip("AN386", r"(MPS2\+? ?)?AN386", "cortex-m4", ("fpv4-sp-d16",), "mps2-an386"),
    Chip("AN500", r"(MPS2\+? ?)?AN500", "cortex-m7", ("fpv5-d16",), "mps2-an500"),  # M7 with DP FPU
    Chip("AN505", r"(MPS2\+? ?)?AN505", "cortex-m33", ("fpv5-sp-d16",), "mps2-an505"),
    Chip("AN547", r"(MPS3 ?)?AN547", "cortex-m55", ("fpv5-d16",), "mps3-an547"),
    Chip("ESP32", r"ESP32(-(D0W|D2W|S0W|U4W|PICO-)[0-9A-Z-]*)?", "esp32"),
    Chip("ESP32-S2", r"ESP32-?S2[0-9A-Z-]*", "esp32s2"),
    Chip("ESP32-S3", r"ESP32-?S3[0-9A-Z-]*", "esp32s3"),
    Chip("ESP32-C3", r"ESP32-?C3[0-9A-Z-]*", "esp32c3"),
    Chip("ESP32-C6", r"ESP32-?C6[0-9A-Z-]*", "esp32c6"),
)


def find_chip(mcu: str) -> Chip | None:
    """The family `mcu` belongs to, or None for a chip tinyscale has no facts about."""
    return next((chip for chip in CHIPS if chip.matches(mcu)), None)


def chip_families() -> tuple[str, ...]:
    return tuple(dict.fromkeys(chip.family for chip in CHIPS))
