"""The verified fit for every bundled target.

    python benchmarks/fit_all_targets.py [--base efficientnet-lite0] [--channels 3]

Prints phi, resolution, the binding constraint and the utilisation of each budget,
all from the measured (converted, TFLM) model.
"""

from __future__ import annotations

import argparse
import time

from tinyscale.boards.targets import load_all_targets
from tinyscale.errors import DoesNotFitError
from tinyscale.network.scaling import format_phi
from tinyscale.search.fit import FitRequest, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="efficientnet-lite0")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    header = (
        f"{'target':18} {'phi':>8} {'next':>8} {'px':>4} {'blocks':>6} {'model B':>10} {'arena B':>9} "
        f"{'region':>8} {'flash %':>7} {'sram %':>7} {'binding':>10} {'verified':>8} {'est err arena':>13} {'s':>5}"
    )
    print(f"base {args.base}, {args.channels} channels, {args.classes} classes")
    print(header)
    for target in load_all_targets():
        start = time.perf_counter()
        request = FitRequest(target, base=args.base, classes=args.classes, channels=args.channels)
        try:
            result = fit(request)
        except DoesNotFitError as exc:
            print(f"{target.name:18} does not fit: {exc}")
            continue
        data = result.to_dict()
        arena_error = (data["estimated_arena_bytes"] - data["arena_bytes"]) / data["arena_bytes"]
        # Printed as fit prints them, so a phi copied from this table gives the same network.
        next_phi = "-" if result.next_phi is None else format_phi(result.next_phi)
        print(
            f"{target.name:18} {format_phi(result.phi):>8} {next_phi:>8} {data['resolution']:4} {data['blocks']:6} "
            f"{data['model_bytes']:10,} {data['arena_bytes']:9,} {data['arena_region']:>8} "
            f"{100 * data['flash_utilisation']:7.1f} {100 * data['sram_utilisation']:7.1f} {data['binding']:>10} "
            f"{str(result.verified):>8} {100 * arena_error:12.2f}% {time.perf_counter() - start:5.1f}"
        )


if __name__ == "__main__":
    main()
