"""Accuracy and speed of the analytic memory model against conversion + TFLM.

    python benchmarks/estimator_accuracy.py [--bases efficientnet-lite0 efficientnet-b0]
        [--phis -10 -8 -6 -4 -2 0] [--channels 1 3] [--classes 10] [--no-measure]

For every (base, channels, phi) it estimates the flatbuffer size and minimal
TFLM arena with tinyscale.graph.estimate, then converts the network with
tinyscale.training.convert.spec_to_tflite (seeded random weights, cached on disk) and
measures the minimal arena with tinyscale.simulation.tflm.measure_arena. Prints one
table with both figures and the relative errors, then the estimator's time
per call (uncached; median wall and CPU time of repeated calls). Goal: |error| <= 1% everywhere.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tinyscale.graph.estimate import estimate_memory
from tinyscale.network.arch import scale

DEFAULT_BASES = ("efficientnet-lite0", "efficientnet-b0")
DEFAULT_PHIS = (-10.0, -8.0, -6.0, -4.0, -2.0, 0.0)
DEFAULT_CHANNELS = (1, 3)
TIMING_REPEATS = 20


def time_estimate(spec) -> tuple[float, float]:
    """Median wall and CPU seconds of one uncached estimate (CPU time is what a
    loaded machine does not inflate)."""
    wall, cpu = [], []
    for _ in range(TIMING_REPEATS):
        estimate_memory.cache_clear()
        started, started_cpu = time.perf_counter(), time.process_time()
        estimate_memory(spec)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return statistics.median(wall), statistics.median(cpu)


def error_percent(estimated: int, measured: int | None) -> str:
    if not measured:
        return "-"
    return f"{100.0 * (estimated - measured) / measured:+.3f}"


def measure(spec) -> tuple[int, int]:
    from tinyscale.simulation.tflm import measure_arena
    from tinyscale.training.convert import spec_to_tflite  # imports TensorFlow

    flatbuffer = spec_to_tflite(spec)
    return len(flatbuffer), measure_arena(flatbuffer).arena_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=list(DEFAULT_BASES))
    parser.add_argument("--phis", nargs="+", type=float, default=list(DEFAULT_PHIS))
    parser.add_argument("--channels", nargs="+", type=int, default=list(DEFAULT_CHANNELS))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--no-measure", action="store_true", help="estimates and timings only")
    args = parser.parse_args()

    header = (f"{'base':<19} {'ch':>2} {'phi':>5} {'res':>4} {'est model B':>12} {'meas model B':>12} "
              f"{'err %':>7} {'est arena B':>12} {'meas arena B':>12} {'err %':>7} {'wall ms':>7} {'cpu ms':>7}")
    print(header)
    print("-" * len(header))
    worst_model = worst_arena = 0.0
    timings = []
    for base in args.bases:
        for channels in args.channels:
            for phi in args.phis:
                spec = scale(base, phi, classes=args.classes, channels=channels).spec
                seconds, cpu_seconds = time_estimate(spec)
                timings.append((seconds, cpu_seconds))
                estimate = estimate_memory(spec)
                model = arena = None
                if not args.no_measure:
                    model, arena = measure(spec)
                    worst_model = max(worst_model, abs(estimate.model_bytes - model) / model)
                    worst_arena = max(worst_arena, abs(estimate.arena_bytes - arena) / arena)
                print(f"{base:<19} {channels:>2} {phi:>5g} {spec.resolution:>4} {estimate.model_bytes:>12} "
                      f"{model if model is not None else '-':>12} {error_percent(estimate.model_bytes, model):>7} "
                      f"{estimate.arena_bytes:>12} {arena if arena is not None else '-':>12} "
                      f"{error_percent(estimate.arena_bytes, arena):>7} {1e3 * seconds:>7.2f} "
                      f"{1e3 * cpu_seconds:>7.2f}", flush=True)
    print()
    if not args.no_measure:
        print(f"worst |error|: model {100 * worst_model:.3f}%, arena {100 * worst_arena:.3f}%")
    for label, column in (("wall", 0), ("cpu", 1)):
        values = [timing[column] for timing in timings]
        print(f"estimate {label} time per call (uncached): median {1e3 * statistics.median(values):.2f} ms, "
              f"max {1e3 * max(values):.2f} ms over {len(values)} networks")


if __name__ == "__main__":
    main()
