"""Patched models on the device: mps2-an386 firmware under QEMU, patched against unpatched.

Patches each model (`tinyscale.search.patching.patch_flatbuffer`, what `tinyscale
patch` runs), renders the unpatched and patched mps2-an386 projects, builds them
against TFLite Micro trees made by create_tflm_tree.py, runs them under QEMU and
prints one markdown row per (model, schedule):

    python benchmarks/patch_firmware.py --tflm TREE_CMSIS --tflm TREE_REF \
        [--tflite esp32=fit/model.tflite ...] [--work DIR]

The golden tiny model is patched with fixed schedules (2x2 and 3x3 ending at its
stride-2 depthwise; its own search finds nothing worth patching, the persistent
records of the copies outweigh the activations saved); a `--tflite` model gets
the schedule `tinyscale patch` searches. All builds share one build directory
per tree (slot "tiny", the one tests/test_firmware_integration.py keeps), so
TFLM compiles once. tests/test_firmware_integration.py uses the helpers below.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import firmware_sizes

from tinyscale.graph.flatbuffer import read_flatbuffer
from tinyscale.graph.patch import split_candidates
from tinyscale.search.patching import patch_flatbuffer

TINY_MODEL = Path(__file__).resolve().parents[1] / "tests" / "golden" / "tiny.tflite"
TINY_GRIDS = ((2, 2), (3, 3))
# The stride-2 depthwise of the tiny model's second block: the patched region
# holds the stem, a residual block and an expand conv (its activation peak).
TINY_SPLIT_FRAGMENT = "b1_dw_act"
SLOT = "tiny"  # the build directory the integration test keeps per kernel tree


def tiny_split(model: bytes) -> str:
    """Name of the tiny model's split tensor (TINY_SPLIT_FRAGMENT)."""
    names = [c.name for c in split_candidates(read_flatbuffer(model)) if TINY_SPLIT_FRAGMENT in c.name]
    if len(names) != 1:
        raise LookupError(f"expected one split candidate named like {TINY_SPLIT_FRAGMENT!r}, found {names}")
    return names[0]


def patched(model: bytes, grid: tuple[int, int] | None = None, split: str | None = None):
    """PatchResult of `model` (the searched schedule unless both grid and split are given)."""
    return patch_flatbuffer(model, grid=grid, split=split)


def schedules(label: str, model: bytes) -> list[tuple[str, str, bytes]]:
    """(label, grid text, flatbuffer) of the unpatched model and its patched versions."""
    rows = [(label, "1x1", model)]
    if label == "tiny":
        results = [patched(model, grid, tiny_split(model)) for grid in TINY_GRIDS]
    else:
        results = [patched(model)]
    for result in results:
        if result.patched:
            grid = "x".join(map(str, result.grid))
            rows.append((f"{label}-{grid}", grid, result.data))
    return rows


def measure_all(models: list[tuple[str, bytes]], trees: list[Path], work: Path) -> list[dict]:
    """One merged row per (model, schedule) with each tree's device figures under its kernel name."""
    rows = []
    for label, model in models:
        baseline: dict[str, dict] = {}  # kernels -> the unpatched model's device row
        for name, grid, data in schedules(label, model):
            row = {"model": label, "grid": grid, "model_bytes": len(data)}
            for tree in trees:
                device = firmware_sizes.measure(data, name, tree, work, slot_label=SLOT)
                kernels = device["kernels"]
                unpatched = baseline.setdefault(kernels, device)
                device["equals_unpatched"] = device["device_outputs"] == unpatched["device_outputs"]
                device["used_ratio"] = device["device_arena_used_bytes"] / unpatched["device_arena_used_bytes"]
                row["host_arena_bytes"] = device["host_arena_bytes"]
                row[kernels] = device
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def _per_kernels(row: dict, kernels: list[str], key: str, fmt=str) -> str:
    return " / ".join(fmt(row[k][key]) for k in kernels)


def markdown(rows: list[dict]) -> str:
    kernels = [k for k in ("cmsis-nn", "reference") if k in rows[0]]
    heads = " / ".join(kernels)
    lines = [
        f"| model | grid | model B | host arena B | firmware arena B ({heads}) | device used B ({heads}) "
        f"| used vs 1x1 | flash predicted B | linked flash B ({heads}) | self-test | max diff vs host "
        f"| outputs = 1x1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    comma = "{:,}".format
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['grid']} | {row['model_bytes']:,} | {row['host_arena_bytes']:,} "
            f"| {_per_kernels(row, kernels, 'arena_bytes', comma)} "
            f"| {_per_kernels(row, kernels, 'device_arena_used_bytes', comma)} "
            f"| {_per_kernels(row, kernels, 'used_ratio', '{:.2f}'.format)} "
            f"| {row[kernels[0]]['predicted_flash_bytes']:,} "
            f"| {_per_kernels(row, kernels, 'linked_flash_bytes', comma)} "
            f"| {_per_kernels(row, kernels, 'selftest')} | {_per_kernels(row, kernels, 'max_diff_vs_host')} "
            f"| {_per_kernels(row, kernels, 'equals_unpatched', lambda v: 'yes' if v else 'NO')} |")
    return "\n".join(lines)


def _models(files: list[str]) -> list[tuple[str, bytes]]:
    models = [("tiny", TINY_MODEL.read_bytes())]
    for item in files:
        label, _, path = item.rpartition("=")
        models.append((label or Path(path).stem, Path(path).read_bytes()))
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    firmware_sizes.add_tree_arguments(parser)
    parser.add_argument("--tflite", action="append", default=[], help="[label=]model.tflite, patched as searched")
    args = parser.parse_args(argv)
    if firmware_sizes.tools_missing():
        return 2
    rows = measure_all(_models(args.tflite), [Path(t) for t in args.tflm], Path(args.work))
    print(markdown(rows))
    passed = all(row[k]["selftest"] == "PASS" for row in rows for k in ("cmsis-nn", "reference") if k in row)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
