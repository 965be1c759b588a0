"""`fit --max-latency-ms` on a few boards: the largest network under each latency budget.

    python benchmarks/fit_latency_budgets.py [--targets T ...] [--budgets MS ...] [--no-verify]

Each row is one `tinyscale fit --target T --max-latency-ms B` (efficientnet-lite0, 10 classes,
3 channels, --patch auto), verified by conversion unless --no-verify; "none" is the fit
without a latency budget. Latency is the cost tables' prediction at the board's clock
(tinyscale.graph.latency), for the answer and for the next, larger network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinyscale.boards.targets import load_target  # noqa: E402
from tinyscale.errors import NothingFitsError  # noqa: E402
from tinyscale.network import arch  # noqa: E402
from tinyscale.network.scaling import format_phi  # noqa: E402
from tinyscale.search.fit import FitRequest, fit  # noqa: E402

DEFAULT_TARGETS = ("nucleo-l476rg", "stm32f746g-disco", "esp32-s3")
DEFAULT_BUDGETS = (None, 200.0, 50.0, 20.0, 5.0)


def row(target_name: str, budget: float | None, verify: bool) -> str:
    target = load_target(target_name)
    request = FitRequest(target, max_latency_ms=budget)
    label = "none" if budget is None else f"{budget:g}"
    start = time.perf_counter()
    try:
        result = fit(request, verify=verify, patch="auto")
    except NothingFitsError as error:
        return f"| {target_name} | {target.clock_hz / 1e6:g} | {label} | nothing fits | | | | | | {error.report['binding']} | |"
    seconds = time.perf_counter() - start
    spec = result.network.spec
    placement = result.placement
    latency = "-" if result.latency is None else f"{result.latency.latency_ms:,.1f}"
    following = "-" if result.next_latency is None else f"{result.next_latency.latency_ms:,.1f}"
    grid = "x".join(map(str, result.schedule.grid))
    return (f"| {target_name} | {target.clock_hz / 1e6:g} | {label} | {format_phi(result.phi)} | {spec.resolution} | "
            f"{arch.count_macs(spec) / 1e6:,.1f} | {grid} | {latency} | {following} | {result.binding} | "
            f"{100 * placement.flash_needed_bytes / placement.flash_budget_bytes:.0f}% / "
            f"{100 * placement.sram_needed_bytes / placement.sram_budget_bytes:.0f}% | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS)
    parser.add_argument("--budgets", nargs="+", type=float, help="latency budgets in ms (the fit without one is always run)")
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    args = parser.parse_args()
    budgets = (None, *args.budgets) if args.budgets else DEFAULT_BUDGETS
    print("| target | MHz | --max-latency-ms | phi | px | MMACs | patch | latency ms | next ms | binding | flash / SRAM | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for target_name in args.targets:
        for budget in budgets:
            print(row(target_name, budget, args.verify), flush=True)


if __name__ == "__main__":
    main()
