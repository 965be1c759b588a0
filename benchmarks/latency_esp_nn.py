"""Calibrate the ESP32 family's latency cost tables from Espressif's published ESP-NN figures.

    python benchmarks/latency_esp_nn.py [--write]     # needs TFLM_SOURCE for person_detect.tflite

No emulator here runs an ESP32, so these tables are estimates (``estimate = true``),
made from the figures in benchmarks/data/published_latencies.toml:

- ESP32-S3: per operator type from ESP-NN's kernel benchmark (CPU cycles of each optimized
  kernel at one or two shapes): ``cycles_per_mac`` (and ``cycles_fixed`` where two shapes
  allow it) for the MAC operators, ``cycles_per_output_element`` for the others. The
  published person-detection time is then an independent check (latency_published.py).
- ESP32 and ESP32-C3: Espressif publishes only whole-network times (person detection).
  Their ESP-NN "generic optimisations" are C, so the tables take the shape of the S3's
  ANSI C kernel figures (the relative cost of each operator type) scaled by one factor
  that makes person detection take the published time: calibrated on that network, so it
  is no check for these two cores.

Cycles are CPU cycles (the published "ticks"), so ``cycles_per_instruction`` is 1 and
says so. ``--write`` writes costs/latency/<cpu>-esp-nn.toml.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from latency_fit import render_cost_table  # noqa: E402

from tinyscale.graph.flatbuffer import read_flatbuffer  # noqa: E402
from tinyscale.graph.latency import costs_dir, parse_cost_table, predict  # noqa: E402

PUBLISHED = ROOT / "benchmarks/data/published_latencies.toml"
ESP_NN_URL = "https://github.com/espressif/esp-nn (README, snapshot d45b843, 2026-04-27)"
# TFLM's RESHAPE runs in place (the planner shares the buffer): a pointer check and the
# dispatch, a few hundred cycles [est.]; not in ESP-NN's table.
RESHAPE_CYCLES = 300.0
CPI_SOURCE = ("not applicable: calibrated directly in CPU cycles (ESP-NN's published 'ticks' and "
              "invoke() times), not from instruction counts")
CORES = {"esp32s3": "esp32-s3", "esp32": "esp32", "esp32c3": "esp32-c3"}  # cpu -> target


def published() -> dict:
    return tomllib.loads(PUBLISHED.read_text())


def person_detect_path() -> Path:
    source = os.environ.get("TFLM_SOURCE")
    if not source:
        sys.exit("set TFLM_SOURCE to a tflite-micro checkout (for tensorflow/lite/micro/models/person_detect.tflite)")
    return Path(source) / "tensorflow/lite/micro/models/person_detect.tflite"


def kernel_coefficients(kernels: list[dict], column: str) -> dict[str, dict]:
    """Per operator type (and type:variant) the cycle coefficients the kernel figures support."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in kernels:
        groups[row["kind"]].append(row)
        if "variant" in row:
            groups[f"{row['kind']}:{row['variant']}"].append(row)
    ops = {}
    for key, rows in sorted(groups.items()):
        cycles = np.array([float(r[column]) for r in rows])
        if rows[0]["macs"]:
            macs = np.array([float(r["macs"]) for r in rows])
            if len(rows) >= 2 and np.ptp(macs) > 0:
                slope, fixed = np.polyfit(macs, cycles, 1)
                if fixed >= 0 and slope > 0:
                    ops[key] = {"cycles_fixed": float(fixed), "cycles_per_mac": float(slope)}
                    continue
            ops[key] = {"cycles_per_mac": float(cycles.sum() / macs.sum())}
        else:
            outputs = np.array([float(r["output_elements"]) for r in rows])
            ops[key] = {"cycles_per_output_element": float(cycles.sum() / outputs.sum())}
        ops[key]["records"] = len(rows)
    ops["RESHAPE"] = {"cycles_fixed": RESHAPE_CYCLES}
    return ops


def scaled(ops: dict[str, dict], factor: float) -> dict[str, dict]:
    return {key: {name: value * factor if name.startswith("cycles") else value for name, value in entry.items()}
            for key, entry in ops.items()}


def table_text(cpu: str, ops: dict, fallback: dict, provenance: dict, comment: str) -> str:
    header = {"cpu": cpu, "kernel_library": "esp-nn", "estimate": True, "cycles_per_instruction": 1.0,
              "cycles_per_instruction_source": CPI_SOURCE}
    return render_cost_table(header, provenance, {"cycles_fixed": 0.0}, fallback, ops, comment)


def parsed(text: str):
    return parse_cost_table(tomllib.loads(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write costs/latency/<cpu>-esp-nn.toml")
    args = parser.parse_args()
    data = published()
    kernels = data["esp_nn_s3_kernels"]
    person = read_flatbuffer(person_detect_path().read_bytes())
    fallback_of = {column: kernel_coefficients(kernels, column)["MUL"] for column in ("optimized_cycles", "ansi_cycles")}

    tables = {}
    s3_ops = kernel_coefficients(kernels, "optimized_cycles")
    tables["esp32s3"] = table_text(
        "esp32s3", s3_ops, {k: v for k, v in fallback_of["optimized_cycles"].items() if k != "records"},
        {"method": "published", "source": f"{ESP_NN_URL}: 'Kernelwise performance for s8 versions', ESP32-S3 "
                                          "240 MHz, optimized column", "fitted_by": "python benchmarks/latency_esp_nn.py --write"},
        "ESP32-S3 + ESP-NN (SIMD assembly) latency cost table, an ESTIMATE from Espressif's published\n"
        "per-kernel cycle counts (benchmarks/data/published_latencies.toml); fallback: elementwise_mul's cost.")

    ansi_ops = kernel_coefficients(kernels, "ansi_cycles")
    ansi_fallback = {k: v for k, v in fallback_of["ansi_cycles"].items() if k != "records"}
    shape_only = parsed(table_text("esp32", ansi_ops, ansi_fallback, {"method": "published", "source": "-",
                                                                      "fitted_by": "-"}, ""))
    print("| cpu | table from | person detection published | model before scaling | factor |")
    print("|---|---|---|---|---|")
    for network in data["networks"]:
        if not network.get("calibrates"):
            continue
        cpu = next(cpu for cpu, target in CORES.items() if target == network["target"])
        unscaled = predict(person, shape_only, network["clock_hz"])
        factor = network["latency_ms"] / unscaled.latency_ms
        print(f"| {cpu} | S3 ANSI C kernel figures | {network['latency_ms']:g} ms | {unscaled.latency_ms:,.1f} ms "
              f"| {factor:.3f} |")
        tables[cpu] = table_text(
            cpu, scaled(ansi_ops, factor), scaled({"x": ansi_fallback}, factor)["x"],
            {"method": "published", "source": f"{ESP_NN_URL}: the ESP32-S3's ANSI C kernel cycles (relative cost "
                                              f"per operator type) x {factor:.4f}, the factor that gives "
                                              f"person_detect.tflite the published {network['latency_ms']:g} ms at "
                                              f"{network['clock_hz'] / 1e6:g} MHz ({network['source']})",
             "fitted_by": "python benchmarks/latency_esp_nn.py --write"},
            f"{network['board']} + ESP-NN (generic C optimisations) latency cost table, an ESTIMATE: the S3's ANSI C\n"
            "kernel figures scaled to the published person-detection time (calibrated on that one network).")
    for cpu, text in tables.items():
        table = parsed(text)  # the schema check the loader will apply
        check = predict(person, table, 240_000_000 if cpu != "esp32c3" else 160_000_000)
        print(f"{cpu}: person_detect predicted {check.latency_ms:,.1f} ms ({check.cycles:,.0f} cycles); "
              f"unmodelled: {', '.join(check.unmodelled) or 'none'}")
        if args.write:
            path = costs_dir() / f"{cpu}-esp-nn.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
