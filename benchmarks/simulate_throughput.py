"""Simulation throughput: TFLM evaluation with one worker process vs all cores.

    python benchmarks/simulate_throughput.py MODEL.tflite [--data fashion-mnist] [--limit 2000]

Runs the same evaluation (int8 inputs, TFLM reference kernels) with 1 worker and
with os.cpu_count() workers, checks that the predictions are identical, and
prints images per second for each. Without MODEL, the `tiny` base at phi 0
(random weights) and the efficientnet-lite0 network at phi -6 are used.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from tinyscale.graph.tflite_model import read_model
from tinyscale.network import arch
from tinyscale.simulation import simulate, tflm
from tinyscale.training.convert import spec_to_tflite
from tinyscale.training.data import Dataset, load_dataset


def models(paths: list[Path], classes: int, channels: int) -> list[tuple[str, bytes]]:
    if paths:
        return [(path.name, path.read_bytes()) for path in paths]
    chosen = [("tiny", 0.0), ("efficientnet-lite0", -6.0)]
    return [(f"{base} phi={phi:g}", spec_to_tflite(arch.scale(base, phi, classes=classes, channels=channels).spec))
            for base, phi in chosen]


def relabel(dataset: Dataset, classes: int) -> Dataset:
    """Fit the model's class count when a random-weight model is measured (speed only)."""
    if dataset.classes == classes:
        return dataset
    names = tuple(str(i) for i in range(classes))
    return Dataset(dataset.x, dataset.y % classes, names, dataset.source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--limit", type=int, default=2000)
    args = parser.parse_args()
    dataset = load_dataset(args.data, "test").limit(args.limit)
    cores = os.cpu_count() or 1
    print(f"{len(dataset)} images of {dataset.source}; {cores} cores")
    print(f"{'model':32} {'arena B':>9} {'workers':>7} {'images/s':>9} {'seconds':>8} {'same':>5}")
    for name, model in models(args.models, dataset.classes, dataset.channels):
        info = read_model(model)
        arena = tflm.measure_arena(model).arena_bytes
        data = relabel(dataset, simulate.output_classes(info))
        baseline = None
        for workers in sorted({1, cores}):
            result = simulate.evaluate(model, info, data, arena, workers=workers)
            same = "-" if baseline is None else ("yes" if np.array_equal(result.predictions, baseline) else "NO")
            baseline = result.predictions if baseline is None else baseline
            print(f"{name:32} {arena:>9,} {workers:>7} {result.images_per_second:>9.1f} {result.seconds:>8.2f} {same:>5}",
                  flush=True)


if __name__ == "__main__":
    main()
