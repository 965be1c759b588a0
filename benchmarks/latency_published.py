"""The latency cost tables against published latencies of real boards (TFLM with CMSIS-NN or ESP-NN).

    python benchmarks/latency_published.py --mlperf-tiny DIR    # TFLM_SOURCE set for person_detect.tflite

For every network in benchmarks/data/published_latencies.toml: the bundled cost table
of that board's core and kernel library predicts one inference at the published
clock, beside the published time (goal: within 30%). DIR is a checkout of
https://github.com/mlcommons/tiny (its trained_models/*.tflite); TFLM_SOURCE a
tflite-micro checkout. A row whose table was calibrated on that very figure says
so: it is no check. The sources follow the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinyscale.graph.flatbuffer import read_flatbuffer  # noqa: E402
from tinyscale.latency import cost_table, predict  # noqa: E402
from tinyscale.targets import load_target  # noqa: E402

PUBLISHED = ROOT / "benchmarks/data/published_latencies.toml"


def model_path(reference: str, mlperf_tiny: Path | None) -> Path | None:
    scheme, _, name = reference.partition(":")
    if scheme == "tflm":
        source = os.environ.get("TFLM_SOURCE")
        return Path(source) / f"tensorflow/lite/micro/models/{name}.tflite" if source else None
    if scheme == "mlperf-tiny":
        return mlperf_tiny / name if mlperf_tiny else None
    raise SystemExit(f"unknown model reference {reference!r}")


def core_of(network: dict) -> tuple[str, str]:
    if "target" in network:
        target = load_target(network["target"])
        return target.cpu, target.kernel_library
    return network["cpu"], network["kernel_library"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlperf-tiny", type=Path, help="a checkout of github.com/mlcommons/tiny")
    args = parser.parse_args()
    networks = tomllib.loads(PUBLISHED.read_text())["networks"]
    print("| board | MHz | model | cost table | published ms | predicted ms | error | |")
    print("|---|---|---|---|---|---|---|---|")
    sources = []
    for network in networks:
        cpu, kernels = core_of(network)
        table = cost_table(cpu, kernels)
        path = model_path(network["model"], args.mlperf_tiny)
        name = network["model"].rsplit("/", 1)[-1].split(":")[-1].removesuffix(".tflite")
        label = f"{cpu}-{kernels}" + (" (estimate)" if table is not None and table.estimate else "")
        if table is None or path is None or not path.is_file():
            why = "no cost table" if table is None else f"model not found ({network['model']})"
            print(f"| {network['board']} | {network['clock_hz'] / 1e6:g} | {name} | {label} | "
                  f"{network['latency_ms']:g} | - | - | {why} |")
            continue
        estimate = predict(read_flatbuffer(path.read_bytes()), table, network["clock_hz"])
        error = (estimate.latency_ms - network["latency_ms"]) / network["latency_ms"] * 100
        note = "calibration point, not a check" if network.get("calibrates") else ""
        if estimate.unmodelled:
            note = (note + "; " if note else "") + f"unmodelled: {', '.join(estimate.unmodelled)}"
        print(f"| {network['board']} | {network['clock_hz'] / 1e6:g} | {name} | {label} | "
              f"{network['latency_ms']:g} | {estimate.latency_ms:,.1f} | {error:+.1f}% | {note} |")
        sources.append(f"- {network['board']}, {name}: {network['framework']}. {network['source']}")
    print("\nSources:")
    print("\n".join(dict.fromkeys(sources)))


if __name__ == "__main__":
    main()
