"""Fashion-MNIST accuracy of the network fitted for each target, float vs int8 in TFLM.

    python benchmarks/fashion_mnist_accuracy.py [--targets nucleo-l476rg esp32 stm32f746g-disco]
        [--epochs 30] [--limit N] [--base efficientnet-lite0] [--out DIR]

Runs `tinyscale build --target T --data fashion-mnist` per target (fit, train on
the 60,000 training images minus a 10% validation split, convert to int8
calibrated on 200 training images, simulate in TFLM on the 10,000 test images)
and prints one table: the fitted network, its measured memory, the float and
int8 test accuracy and the training time. Needs the Debian package
dataset-fashion-mnist. Goal (issue 3): nucleo-l476rg >= 92% int8, within 0.5
points of float.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tinyscale.network.scaling import format_phi

DEFAULT_TARGETS = ("nucleo-l476rg", "esp32", "stm32f746g-disco")


def build(target: str, args: argparse.Namespace, out: Path) -> dict:
    command = ["tinyscale", "build", "--target", target, "--data", "fashion-mnist", "-o", str(out),
               "--base", args.base, "--channels", "1", "--epochs", str(args.epochs), "--force"]
    if args.limit:
        command += ["--limit", str(args.limit)]
    started = time.perf_counter()
    log = out.parent / f"{target}.log"  # the build's progress and report, to follow with tail -f
    with log.open("w") as progress:
        finished = subprocess.run(command, stdout=progress, stderr=subprocess.STDOUT, text=True)
    if finished.returncode != 0:
        return {"target": target, "error": log.read_text().strip().splitlines()[-1:]}
    result = json.loads((out / "report.json").read_text())  # what `build --json` would print
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def row(result: dict) -> str:
    if "error" in result:
        return f"{result['target']:18} failed: {result['error']}"
    gap = 100 * (result["float_accuracy"] - result["int8_accuracy"])
    return (
        f"{result['target']:18} {format_phi(result['phi']):>7} {result['resolution']:>4} {result['model_bytes']:>9,} "
        f"{result['arena_bytes']:>9,} {'yes' if result['fits'] else 'NO':>4} {result['epochs_run']:>6} "
        f"{result['train_seconds']:>8.0f} {100 * result['float_accuracy']:>7.2f} {100 * result['int8_accuracy']:>7.2f} "
        f"{gap:>6.2f} {100 * result['agreement']:>7.2f} {result['test_samples']:>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--limit", type=int, default=None, help="training subset (the test subset is 1/6 of it)")
    parser.add_argument("--base", default="efficientnet-lite0")
    parser.add_argument("--out", type=Path, default=None, help="keep the build directories here")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="fmnist-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"Fashion-MNIST, base {args.base}, grey input, up to {args.epochs} epochs"
          + (f", training subset {args.limit}" if args.limit else ", full training set") + f"; builds in {root}")
    print(f"{'target':18} {'phi':>7} {'px':>4} {'model B':>9} {'arena B':>9} {'fits':>4} {'epochs':>6} "
          f"{'train s':>8} {'float %':>7} {'int8 %':>7} {'gap':>6} {'agree %':>7} {'test n':>6}")
    for target in args.targets:
        result = build(target, args, root / target)
        print(row(result), flush=True)
        (root / f"{target}.json").write_text(json.dumps(result, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
