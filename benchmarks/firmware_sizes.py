"""Predicted vs linked flash and RAM of generated firmware for QEMU's MPS2/MPS3 boards, and host-vs-QEMU agreement.

Renders `tinyscale firmware` projects, builds them against TFLite Micro trees
made by create_tflm_tree.py, runs them under QEMU and prints one row per
(model, kernels):

    python benchmarks/firmware_sizes.py --tflm /path/tree-cmsis --tflm /path/tree-ref \
        [--target mps2-an386 | mps2-an500 | mps2-an505 | mps3-an547] \
        [--model tiny:0 --model tiny:0.5 | --tflite some.tflite] [--work DIR]

The trees must be made for the target's core (create_tflm_tree.py's TARGET_ARCH,
e.g. cortex-m4+fp for mps2-an386, cortex-m55 for mps3-an547).

A tree with third_party/cmsis_nn builds with CMSIS-NN, one without with reference
kernels. Build directories under --work are reused, so a second run recompiles
only the application. tests/test_firmware_integration.py uses the helpers below.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tinyscale.boards.targets import load_target
from tinyscale.project import render as fw
from tinyscale.project.board_glue import qemu_machine
from tinyscale.project.context import FirmwareOptions

DEFAULT_TARGET = "mps2-an386"
# Sections the image occupies in flash (.data is copied from flash at reset) and in RAM.
FLASH_SECTIONS = (".isr_vector", ".text", ".ARM.extab", ".ARM.exidx", ".preinit_array", ".init_array",
                  ".fini_array", ".data")
RAM_SECTIONS = (".data", ".bss", ".tensor_arena", ".heap", ".stack")


def kernels_of(tflm_root: Path) -> str:
    return "cmsis-nn" if (Path(tflm_root) / "third_party" / "cmsis_nn").is_dir() else "reference"


def tree_variables(cpu: str, kernels: str) -> tuple[str, ...]:
    """The environment variables naming a `kernels` tree for `cpu`, first match wins: TFLM_ROOT /
    TFLM_REFERENCE_ROOT plus the cpu upper-cased with "-" as "_"; the Cortex-M4 also takes the plain names."""
    base = "TFLM_ROOT" if kernels == "cmsis-nn" else "TFLM_REFERENCE_ROOT"
    suffixed = f"{base}_{cpu.upper().replace('-', '_')}"
    return (suffixed, base) if cpu == "cortex-m4" else (suffixed,)


def tree_for(cpu: str, kernels: str) -> Path | None:
    """The first tree the variables name that looks like a TFLM tree, or None."""
    for variable in tree_variables(cpu, kernels):
        root = os.environ.get(variable)
        if root and (Path(root) / "tensorflow" / "lite" / "micro" / "micro_interpreter.h").is_file():
            return Path(root)
    return None


def mps2_target(kernels: str, name: str = DEFAULT_TARGET):
    """A bundled QEMU board target, with its kernel library set to what the tree provides."""
    target = load_target(name)
    if qemu_machine(target) is None:
        raise ValueError(f"target {name!r} names no chip QEMU emulates (mcu {target.mcu!r})")
    return target if target.kernel_library == kernels else replace(target, kernel_library=kernels)


def qemu_command(machine: str) -> list[str]:
    return ["qemu-system-arm", "-M", machine, "-nographic", "-semihosting-config", "enable=on,target=native"]


def build(project: Path, build_dir: Path, tflm_root: Path, jobs: int = 2) -> Path:
    """Configure and build a cmake-arm project; returns the .elf. Raises RuntimeError with the log tail."""
    for command in (["cmake", "-S", str(project), "-B", str(build_dir), f"-DTFLM_ROOT={tflm_root}"],
                    ["cmake", "--build", str(build_dir), f"-j{jobs}"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise RuntimeError(f"{' '.join(command)} failed:\n{tail}")
    return build_dir / "app.elf"


@dataclass(frozen=True)
class QemuRun:
    returncode: int
    text: str
    arena_used_bytes: int | None
    inference_us: int | None
    outputs: tuple[float, ...]  # integers for int8/int16 outputs, floats (printed %.8e) for float32
    max_diff: float | None
    passed: bool


def _number(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def run_qemu(elf: Path, timeout: float = 600.0, machine: str = DEFAULT_TARGET) -> QemuRun:
    result = subprocess.run([*qemu_command(machine), "-kernel", str(elf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, timeout=timeout)
    text = result.stdout
    output_line = re.search(r"^OUTPUT 0:(.*)$", text, re.MULTILINE)
    outputs = tuple(float(v) for v in output_line.group(1).split() if v != "...") if output_line else ()
    max_diff = re.search(r"max_diff (\S+)", text)
    return QemuRun(
        returncode=result.returncode,
        text=text,
        arena_used_bytes=_number(r"ARENA used (\d+) B", text),
        inference_us=_number(r"INFERENCE us (\d+)", text),
        outputs=outputs,
        max_diff=float(max_diff.group(1)) if max_diff else None,
        passed="SELFTEST PASS" in text,
    )


def sections(elf: Path) -> list[tuple[str, int, int]]:
    """(name, bytes, address) of each section `arm-none-eabi-size -A` lists."""
    text = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit() and parts[2].isdigit():
            found.append((parts[0], int(parts[1]), int(parts[2])))
    return found


def section_sizes(elf: Path) -> dict[str, int]:
    return {name: size for name, size, _ in sections(elf)}


def linked_sizes(elf: Path) -> dict[str, int]:
    sizes = section_sizes(elf)
    return {
        "flash_bytes": sum(sizes.get(name, 0) for name in FLASH_SECTIONS),
        "ram_bytes": sum(sizes.get(name, 0) for name in RAM_SECTIONS),
        "arena_bytes": sizes.get(".tensor_arena", 0),
    }


def measure(model: bytes, label: str, tflm_root: Path, work: Path, slot_label: str | None = None,
            target_name: str = DEFAULT_TARGET) -> dict:
    """Render, build and run one model with one TFLM tree on one QEMU board; returns a result row.

    Models measured with the same `slot_label` share a build directory, so TFLM
    compiles once for them. mps2-an386's slots keep their old names (no board
    prefix), so existing build directories stay valid.
    """
    kernels = kernels_of(tflm_root)
    target = mps2_target(kernels, target_name)
    prefix = "" if target_name == DEFAULT_TARGET else f"{target_name}-"
    slot = work / f"{prefix}{slot_label or label}-{kernels}"
    options = FirmwareOptions(target=target, out_dir=slot / "project", name="app",
                                 force=True, allow_overflow=True, model_file=f"{label}.tflite")
    result = fw.generate_firmware(model, options)
    context = result.context
    elf = build(slot / "project", slot / "build", tflm_root)
    run = run_qemu(elf, machine=qemu_machine(target))
    linked = linked_sizes(elf)
    expected = context.expected[0]
    host_diff = float(np.max(np.abs(np.array(run.outputs) - np.array(expected.values[: len(run.outputs)])))) \
        if run.outputs else None
    if host_diff is not None and expected.dtype != "float32":
        host_diff = int(host_diff)
    return {
        "model": label,
        "target": target_name,
        "kernels": kernels,
        "model_bytes": context.model_size_bytes,
        "predicted_flash_bytes": context.predicted_flash_bytes,
        "linked_flash_bytes": linked["flash_bytes"],
        "predicted_ram_bytes": context.placement.sram_needed_bytes,
        "linked_ram_bytes": linked["ram_bytes"],
        "host_arena_bytes": context.arena.measured_bytes,
        "arena_bytes": context.arena.arena_bytes,
        "device_arena_used_bytes": run.arena_used_bytes,
        "predicted_device_arena_used_bytes": context.arena.device_arena_used_bytes,  # None: not modelled
        "selftest": "PASS" if run.passed else "FAIL",
        "max_diff_vs_host": host_diff,  # from the printed outputs: 9 significant digits for float32
        "device_max_diff": run.max_diff,  # the self-test's own comparison, at full precision
        "output_dtype": expected.dtype,
        "tolerance": expected.tolerance,
        "outputs_printed": len(run.outputs),
        "device_outputs": list(run.outputs),  # the first 64 values of output 0 as printed
        "qemu_inference_us": run.inference_us,
    }


def _models(specs: list[str], files: list[str]) -> list[tuple[str, bytes]]:
    models = [(Path(f).stem, Path(f).read_bytes()) for f in files]
    if specs:
        from tinyscale.network.arch import scale  # noqa: PLC0415
        from tinyscale.training.convert import spec_to_tflite  # noqa: PLC0415 - TensorFlow

        for spec in specs:
            base, _, phi = spec.partition(":")
            models.append((f"{base}-phi{phi or 0}", spec_to_tflite(scale(base, float(phi or 0)).spec)))
    return models


def add_tree_arguments(parser: argparse.ArgumentParser) -> None:
    """--tflm and --work, shared with patch_firmware.py."""
    parser.add_argument("--tflm", action="append", required=True, help="TFLM tree (repeat for CMSIS-NN and reference)")
    parser.add_argument("--work", default="/tmp/tinyscale-firmware-sizes", help="reused build directories")


def tools_missing() -> bool:
    """True (and a line on stderr) without the cross compiler or QEMU."""
    if shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"):
        return False
    print("needs qemu-system-arm and arm-none-eabi-gcc", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tree_arguments(parser)
    parser.add_argument("--target", default=DEFAULT_TARGET, help="a bundled QEMU board (trees made for its core)")
    parser.add_argument("--model", action="append", default=[], help="base:phi, e.g. tiny:0 (default)")
    parser.add_argument("--tflite", action="append", default=[], help="a .tflite file")
    args = parser.parse_args(argv)
    if tools_missing():
        return 2
    rows = []
    for label, model in _models(args.model or ([] if args.tflite else ["tiny:0"]), args.tflite):
        for tree in args.tflm:
            rows.append(measure(model, label, Path(tree), Path(args.work), target_name=args.target))
            print(json.dumps(rows[-1]), flush=True)
    return 0 if all(row["selftest"] == "PASS" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
