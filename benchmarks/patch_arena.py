"""Patch-based inference on the fitted networks of a few boards (and any .tflite given).

    python benchmarks/patch_arena.py [--targets esp32 nucleo-l476rg ...] [--model FILE.tflite ...]

For each target, gets the fitted int8 model with `tinyscale fit --target T --out DIR`,
then runs the same search as `tinyscale patch` (split tensor and grid under the
30% extra-MACs cap, ranked by the exact analytic arena, the winner measured in
TFLM) and prints the arena before and after, the ratio, the planner's peak
activations (TFLM's arena head), the extra MACs, the max output difference on
random inputs, the schedules ranked / measured and the seconds the patch took.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tinyscale.search.patching import DEFAULT_MAX_EXTRA_MACS, patch_flatbuffer

DEFAULT_TARGETS = ("esp32", "nucleo-l476rg", "nucleo-f411re", "nano33ble", "rpi-pico")


def fitted_model(target: str, directory: Path) -> bytes:
    out = directory / target
    subprocess.run([sys.executable, "-m", "tinyscale", "fit", "--target", target, "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return (out / "model.tflite").read_bytes()


def row(name: str, data: bytes, max_extra_macs: float) -> str:
    result = patch_flatbuffer(data, max_extra_macs=max_extra_macs)
    before, after = result.before, result.after
    grid = f"{result.grid[0]}x{result.grid[1]}"
    split = "-" if result.split_shape is None else "x".join(map(str, result.split_shape[1:]))
    return (f"| {name} | {grid} | {split} | {before.arena_bytes:,} | {after.arena_bytes:,} | "
            f"{after.arena_bytes / before.arena_bytes:.2f} | {before.activations_bytes:,} | "
            f"{after.activations_bytes:,} | {after.activations_bytes / before.activations_bytes:.2f} | "
            f"{before.model_bytes:,} | {after.model_bytes:,} | {result.extra_macs:.1%} | {result.max_diff} | "
            f"{result.ranked} / {len(result.measured)} | {result.seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="*", default=list(DEFAULT_TARGETS))
    parser.add_argument("--model", nargs="*", default=[], type=Path, help="Other int8 .tflite files.")
    parser.add_argument("--max-extra-macs", type=float, default=DEFAULT_MAX_EXTRA_MACS)
    args = parser.parse_args()
    print("| model | grid | split | arena B | patched arena B | ratio | peak act. B | patched peak act. B | "
          "ratio | model B | patched model B | extra MACs | max diff | ranked / measured | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="patch-arena-") as directory:
        for target in args.targets:
            print(row(f"{target} fit", fitted_model(target, Path(directory)), args.max_extra_macs), flush=True)
    for path in args.model:
        print(row(path.name, path.read_bytes(), args.max_extra_macs), flush=True)


if __name__ == "__main__":
    main()
