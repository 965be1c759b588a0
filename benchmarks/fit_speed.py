"""How fast is `tinyscale fit`, and does the analytic search find the same phi
as a search that converts and measures every probe?

    python benchmarks/fit_speed.py [--target esp32] [--base efficientnet-lite0]

Prints one table. Wall times are for this machine; the CLI runs use a fresh,
empty conversion cache so the verification conversion is really done, with
`--patch off` (the unpatched search) and `--patch auto` (the default: patch
schedules ranked at every probe above the unpatched answer, the answer
converted, patched and measured).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from tinyscale.boards.targets import load_target
from tinyscale.network.scaling import format_phi
from tinyscale.search.fit import FitRequest, Measured, fit, measured_memory


def cli_run(args: list[str], cache_dir: str) -> tuple[float, dict]:
    env = dict(os.environ, TINYSCALE_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    done = subprocess.run(["tinyscale", *args, "--json"], env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="esp32")
    parser.add_argument("--base", default="efficientnet-lite0")
    args = parser.parse_args()
    common = ["fit", "--target", args.target, "--base", args.base]

    rows = []
    for mode in ("off", "auto"):
        with tempfile.TemporaryDirectory() as cache:
            flags = [*common, "--patch", mode]
            wall, analytic = cli_run([*flags, "--no-verify"], cache)
            rows.append((f"CLI --patch {mode}, analytic only (--no-verify)", wall, analytic["phi"], analytic["probes"], "-"))
            wall, verified = cli_run(flags, cache)
            rows.append((f"CLI --patch {mode}, + verification (cold cache)", wall, verified["phi"], verified["probes"], 1))
            wall, again = cli_run(flags, cache)
            rows.append((f"CLI --patch {mode}, + verification (warm cache)", wall, again["phi"], again["probes"], 1))
        if mode == "off":
            unpatched = verified
    verified = unpatched  # the convert-every-probe search below is the unpatched one

    request = FitRequest(load_target(args.target), base=args.base)
    start = time.perf_counter()
    fit(request, verify=False)
    rows.append(("in-process analytic search, --patch off", time.perf_counter() - start, unpatched["phi"],
                 unpatched["probes"], "-"))
    start = time.perf_counter()
    fit(request, verify=False, patch="auto")
    rows.append(("in-process analytic search, --patch auto", time.perf_counter() - start, analytic["phi"],
                 analytic["probes"], "-"))

    conversions = []

    def convert_every_probe(spec) -> Measured:
        conversions.append(spec)
        return measured_memory(spec)

    os.environ["TINYSCALE_NO_CACHE"] = "1"
    start = time.perf_counter()
    brute = fit(request, verify=False, estimator=convert_every_probe)
    brute_wall = time.perf_counter() - start
    rows.append(("search converting every probe", brute_wall, brute.phi, brute.probes, len(conversions)))

    print(f"target {args.target}, base {args.base}")
    print(f"{'run':50} {'wall s':>8} {'phi':>8} {'networks':>9} {'conversions':>12}")
    for name, wall, phi, probes, converted in rows:
        print(f"{name:50} {wall:8.2f} {format_phi(phi):>8} {probes:9} {converted!s:>12}")
    ratio = brute_wall / rows[1][1]
    same = "same" if brute.phi == verified["phi"] and brute.network.spec == request.spec(verified["phi"]) else "DIFFERENT"
    print(f"convert-every-probe / verified CLI wall: {ratio:.1f}x; answers: {same} network")


if __name__ == "__main__":
    sys.exit(main())
