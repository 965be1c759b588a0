"""`fit --patch off` against `fit --patch auto` on every bundled target, both verified.

    python benchmarks/patch_fit.py [--base efficientnet-lite0] [--targets esp32 rpi-pico]

Prints one markdown table: per target and mode, phi, resolution, params, the
measured model bytes and TFLM arena (64-bit host), the device arena the firmware
allocates (budget.place_model: the 32-bit replay on Cortex-M, host + margin on
the ESP32s), flash and SRAM use against the budgets,
MACs (of the measured flatbuffer: the patched one counts the halos'
recomputation), the schedule, what binds, and the wall time of the fit.
"""

from __future__ import annotations

import argparse
import time

from tinyscale.boards.targets import load_all_targets, load_target
from tinyscale.errors import DoesNotFitError
from tinyscale.graph.analysis import model_macs
from tinyscale.graph.flatbuffer import read_flatbuffer
from tinyscale.network import arch
from tinyscale.network.scaling import format_phi
from tinyscale.search.fit import FitRequest, fit

COLUMNS = ("target", "patch", "phi", "px", "params", "model B", "arena B", "device arena B", "flash %", "SRAM %",
           "MACs", "grid", "split", "binding", "s")


def _row(name: str, mode: str, request: FitRequest) -> list[str]:
    start = time.perf_counter()
    try:
        result = fit(request, patch=mode)
    except DoesNotFitError as exc:
        return [name, mode, f"does not fit: {exc}"]
    data = result.to_dict()
    schedule = result.schedule
    split = read_flatbuffer(result.measured.unpatched_tflite).graph if schedule.patched else None
    split_shape = "-"
    if split is not None:
        tensor = next(t for t in split.tensors if t.name == schedule.split_tensor)
        split_shape = "x".join(str(d) for d in tensor.shape[1:])
    return [
        name, mode, format_phi(result.phi), str(data["resolution"]), f"{arch.count_params(result.network.spec):,}",
        f"{data['model_bytes']:,}", f"{data['arena_bytes']:,}", f"{data['device_arena_bytes']:,}",
        f"{100 * data['flash_utilisation']:.1f}",
        f"{100 * data['sram_utilisation']:.1f}", f"{model_macs(read_flatbuffer(result.measured.tflite)):,}",
        "x".join(map(str, schedule.grid)), split_shape, data["binding"], f"{time.perf_counter() - start:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="efficientnet-lite0")
    parser.add_argument("--targets", nargs="*", help="bundled target names (default: all)")
    args = parser.parse_args()
    targets = [load_target(name) for name in args.targets] if args.targets else load_all_targets()
    print(f"base {args.base}, 3 channels, 10 classes; every figure measured (converted, patched, TFLM)")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for target in targets:
        request = FitRequest(target, base=args.base)
        for mode in ("off", "auto"):
            print("| " + " | ".join(_row(target.name, mode, request)) + " |", flush=True)


if __name__ == "__main__":
    main()
