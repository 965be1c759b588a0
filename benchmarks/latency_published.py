"""The latency cost tables against published latencies of real boards (TFLM with CMSIS-NN or ESP-NN).

    python benchmarks/latency_published.py --mlperf-tiny DIR    # TFLM_SOURCE set for person_detect.tflite

For every network in benchmarks/data/published_latencies.toml: the bundled cost table
of that board's core and kernel library predicts one inference at the published
clock, beside the published time (goal: within 30%). DIR is a checkout of
https://github.com/mlcommons/tiny (its trained_models/*.tflite); TFLM_SOURCE a
tflite-micro checkout; a Keras application model is built and converted to int8
with TensorFlow (random weights: latency depends on the shapes) into --work. A row whose table was calibrated on that very figure says
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

from tinyscale.boards.targets import load_target  # noqa: E402
from tinyscale.graph.flatbuffer import read_flatbuffer  # noqa: E402
from tinyscale.graph.latency import cost_table, predict  # noqa: E402

PUBLISHED = ROOT / "benchmarks/data/published_latencies.toml"


def keras_mobilenet_v2(spec: str, work: Path) -> Path:
    """Keras's MobileNetV2 (alpha, resolution, classes; random weights), int8 (TensorFlow imported here)."""
    alpha, resolution, classes = spec.split(":")
    path = work / f"mobilenet_v2_{alpha}_{resolution}_{classes}.tflite"
    if path.is_file():
        return path
    import numpy as np
    import tensorflow as tf

    size = int(resolution)
    model = tf.keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=float(alpha), weights=None,
                                              classes=int(classes))
    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.random((1, size, size, 3), dtype=np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    work.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    return path


def model_path(reference: str, mlperf_tiny: Path | None, work: Path) -> Path | None:
    scheme, _, name = reference.partition(":")
    if scheme == "keras-mobilenet-v2":
        return keras_mobilenet_v2(name, work)
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
    parser.add_argument("--work", type=Path, default=Path("/tmp/tinyscale-latency-published"),
                        help="where the converted Keras models are kept")
    args = parser.parse_args()
    networks = tomllib.loads(PUBLISHED.read_text())["networks"]
    print("| board | MHz | model | cost table | published ms | predicted ms | error | |")
    print("|---|---|---|---|---|---|---|---|")
    sources = []
    for network in networks:
        cpu, kernels = core_of(network)
        table = cost_table(cpu, kernels)
        path = model_path(network["model"], args.mlperf_tiny, args.work)
        name = network["model"].rsplit("/", 1)[-1].removesuffix(".tflite")
        name = name.split(":", 1)[-1] if name.startswith(("tflm:", "mlperf-tiny:")) else name
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
