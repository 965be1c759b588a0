"""Host simulation of a quantized TFLite Micro model: memory, per-operator table, accuracy.

Works on any TFLM model of the kinds `tinyscale.graph.tflite_model.SUPPORTED_MODELS`
names (int8 or int16x8, integer or float32 I/O), not only tinyscale's. The arena is measured by
:func:`tinyscale.simulation.tflm.measure_arena` (bisection in isolated processes), and
computed beside it by :func:`tinyscale.graph.estimate.arena_plan` (None, with the
reason, for operators it does not model); the model is run by :func:`tinyscale.simulation.tflm.run_model` in worker processes, several
in parallel, so an abort inside TFLM costs a worker, never this process.

The per-operator table reads the flatbuffer only (main subgraph): an
activation tensor is live from the operator that produces it (graph inputs and
state tensors: from the start) to the last operator that reads it (graph
outputs: to the end). Operators TFLM runs in place (RESHAPE and the like) share one buffer. The
peak of live activation bytes approximates what the planner must place; the
measured minimal arena adds TFLM's own structures and scratch buffers.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tinyscale.boards.budget import Placement, place_model
from tinyscale.boards.kernels import check_kernel_support
from tinyscale.boards.targets import Target
from tinyscale.errors import DataError, NotModelledError, UsageError
from tinyscale.graph.analysis import operator_macs as graph_operator_macs
from tinyscale.graph.estimate import arena_plan
from tinyscale.graph.latency import LatencyEstimate, no_model_reason, predict_for_target
from tinyscale.graph.model import element_count
from tinyscale.graph.tflite_model import (
    IoQuantization,
    ModelInfo,
    OperatorInfo,
    check_full_integer,
    input_quantization,
    output_quantization,
    read_model,
)
from tinyscale.simulation import tflm
from tinyscale.training.data import Dataset, check_classes, network_inputs, quantize

log = logging.getLogger(__name__)

# Flash of the TFLM runtime, used when no target says what its framework and
# runtime take [est.]: the TFLM framework alone is 9,732 B on a Cortex-M3
# (TFLM memory_footprint README); interpreter glue, op resolver and error
# reporting bring it to ~16 KB. Per kernel, an estimate for optimized int8
# kernels (CMSIS-NN / ESP-NN) on a 32-bit MCU, from "40-100 KB for TFLM and 5-10
# optimized kernels" (shared notes, boards.md). A target's measured
# `flash.reserved_bytes` replaces this whole estimate in the fit check.
RUNTIME_FRAMEWORK_BYTES = 16_384
KERNEL_FLASH_BYTES = {
    "CONV_2D": 12_288,
    "DEPTHWISE_CONV_2D": 12_288,
    "FULLY_CONNECTED": 6_144,
    "TRANSPOSE_CONV": 8_192,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": 12_288,
    "SVDF": 6_144,
    "SOFTMAX": 4_096,
    "LOGISTIC": 3_072,
    "TANH": 3_072,
    "ADD": 4_096,
    "MUL": 4_096,
    "AVERAGE_POOL_2D": 4_096,
    "MAX_POOL_2D": 4_096,
    "MEAN": 4_096,
}
DEFAULT_KERNEL_FLASH_BYTES = 2_048

# Each chunk should take a few seconds (progress reports come once per chunk and
# a chunk must stay well inside the runner's per-batch time limit): its size is
# adapted to the measured time per image.
CHUNK_SECONDS = 8.0
FIRST_CHUNK = 32
MAX_CHUNK = 4096

# ---------------------------------------------------------------------------
# Per-operator table


@dataclass(frozen=True)
class OperatorRow:
    index: int
    name: str
    output_shape: tuple[int, ...]
    macs: int
    live_bytes: int  # activation bytes live while this operator runs

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.name, "output_shape": list(self.output_shape),
                "macs": self.macs, "live_bytes": self.live_bytes}


def operator_macs(info: ModelInfo, op: OperatorInfo) -> int:
    """Multiply-accumulates of `op` (the graph's one count: convolutions, fully-connected, LSTMs)."""
    return graph_operator_macs(info.graph, info.graph.operators[op.index])


# Operators TFLM runs in place: the output shares the input's buffer.
_IN_PLACE_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}


def _aliases(info: ModelInfo) -> dict[int, int]:
    """Tensor -> the tensor whose buffer it shares (itself unless made by an in-place op)."""
    alias: dict[int, int] = {}
    for op in info.operators:
        if op.name in _IN_PLACE_OPS and op.inputs and op.outputs and op.inputs[0] >= 0:
            source = op.inputs[0]
            if not info.tensors[source].is_constant:
                alias[op.outputs[0]] = alias.get(source, source)
    return alias


def _lifetimes(info: ModelInfo) -> dict[int, tuple[int, int]]:
    """Activation buffer (tensor index) -> (first operator, last operator) it is live for."""
    last = len(info.operators) - 1
    alias = _aliases(info)
    produced: dict[int, int] = {}
    consumed: dict[int, int] = {}
    for op in info.operators:
        for index in op.outputs:
            produced.setdefault(alias.get(index, index), op.index)
        for index in op.inputs:
            if index >= 0:
                consumed[alias.get(index, index)] = op.index
    outputs = {alias.get(index, index) for index in info.outputs}
    spans = {}
    for tensor in info.tensors:
        index = tensor.index
        if tensor.is_constant or index in alias or (index not in produced and index not in consumed):
            continue
        # Graph inputs and state (variable) tensors exist before the first operator.
        start = produced.get(index, 0)
        end = last if index in outputs or index not in produced else consumed.get(index, start)
        spans[index] = (start, max(start, end))
    return spans


def operator_table(info: ModelInfo) -> list[OperatorRow]:
    spans = _lifetimes(info)
    rows = []
    for op in info.operators:
        live = sum(info.tensors[i].nbytes for i, (start, end) in spans.items() if start <= op.index <= end)
        output = info.tensors[op.outputs[0]].shape if op.outputs and op.outputs[0] >= 0 else ()
        rows.append(OperatorRow(op.index, op.name, output, operator_macs(info, op), live))
    return rows


def runtime_flash_estimate(op_names: tuple[str, ...]) -> int:
    """TFLM framework plus one kernel per distinct operator (see KERNEL_FLASH_BYTES)."""
    return RUNTIME_FRAMEWORK_BYTES + sum(KERNEL_FLASH_BYTES.get(name, DEFAULT_KERNEL_FLASH_BYTES)
                                         for name in set(op_names))


# ---------------------------------------------------------------------------
# Memory report


@dataclass
class MemoryReport:
    info: ModelInfo
    arena: tflm.ArenaMeasurement
    rows: list[OperatorRow]
    runtime_bytes: int
    runtime_source: str
    placement: Placement | None = None
    # The analytic arena (tinyscale.graph.estimate's TFLM replay); None when it does not model the model.
    analytic_arena_bytes: int | None = None
    analytic_note: str | None = None  # why it is None
    # The predicted latency at the target's clock (tinyscale.graph.latency); None without a target or cost table.
    latency: LatencyEstimate | None = None
    latency_note: str | None = None  # why it is None when a target was given

    @property
    def model_bytes(self) -> int:
        return self.info.size_bytes

    @property
    def arena_bytes(self) -> int:
        return self.arena.arena_bytes

    @property
    def flash_needed_bytes(self) -> int:
        if self.placement is not None:
            return self.placement.flash_needed_bytes
        return self.model_bytes + self.runtime_bytes

    @property
    def peak(self) -> OperatorRow | None:
        return max(self.rows, key=lambda row: row.live_bytes) if self.rows else None

    def to_dict(self) -> dict[str, Any]:
        info = self.info
        peak = self.peak
        data: dict[str, Any] = {
            "model_bytes": self.model_bytes,
            "arena_bytes": self.arena_bytes,
            "arena_reported_bytes": self.arena.reported_bytes,
            "analytic_arena_bytes": self.analytic_arena_bytes,
            "ops": list(info.operator_names),
            "operators": len(info.operators),
            "subgraphs": info.subgraphs,
            "macs": sum(row.macs for row in self.rows),
            "peak_activation_bytes": peak.live_bytes if peak else 0,
            "peak_operator": peak.index if peak else None,
            "runtime_flash_bytes": self.runtime_bytes,
            "runtime_flash_source": self.runtime_source,
            "flash_needed_bytes": self.flash_needed_bytes,
            **io_dicts(info),
            "layers": [row.to_dict() for row in self.rows],
        }
        if self.placement is not None:
            data.update(self.placement.to_dict())
            data.update(self.latency.to_dict() if self.latency is not None else
                        {"latency_ms": None, "cycles": None, "latency": None})
            data["latency_note"] = self.latency_note
        return data


def io_dict(io: IoQuantization) -> dict[str, Any]:
    """A model input or output: its own type, and the integer type and parameters it maps to."""
    tensor = io.tensor
    return {
        "name": tensor.name,
        "shape": list(tensor.shape),
        "dtype": tensor.dtype,
        "integer_dtype": io.dtype,  # differs from dtype for float32 I/O (QUANTIZE/DEQUANTIZE)
        "scale": io.scale,
        "zero_point": io.zero_point,
    }


def io_dicts(info: ModelInfo) -> dict[str, list[dict[str, Any]]]:
    return {"inputs": [io_dict(input_quantization(info, i)) for i in range(len(info.inputs))],
            "outputs": [io_dict(output_quantization(info, i)) for i in range(len(info.outputs))]}


def load_model_bytes(data: bytes, source: str = "the model") -> ModelInfo:
    """Parse and check a flatbuffer: ModelError unless TFLM can run it as full integer."""
    info = read_model(data)
    check_full_integer(info, source)
    return info


def memory_report(data: bytes, target: Target | None = None, source: str = "the model") -> MemoryReport:
    info = load_model_bytes(data, source)
    if target is not None:  # what firmware would refuse for this target, simulate refuses too
        check_kernel_support(info, target.kernel_library, target.name)
    arena = tflm.measure_arena(data)
    placement = None
    if target is not None:
        # The same device-arena rule as fit and firmware.
        placement = place_model(target, info.model, info.size_bytes, arena.arena_bytes, info.selftest_bytes)
    if target is not None:
        runtime_bytes = target.flash.reserved_bytes + placement.extra_kernel_flash_bytes
        runtime_source = f"{target.name} flash.reserved_bytes" + (" + patch kernels" if placement.extra_kernel_flash_bytes else "")
    else:
        runtime_bytes, runtime_source = runtime_flash_estimate(info.operator_names), "estimate per operator"
    analytic, note = analytic_arena(info)
    if analytic is not None and analytic != arena.arena_bytes:
        log.warning("the analytic arena (%d B) differs from the measured minimum (%d B)", analytic, arena.arena_bytes)
    latency = predict_for_target(info.model, target) if target is not None else None
    latency_note = no_model_reason(target.cpu, target.kernel_library) if target is not None and latency is None else None
    return MemoryReport(info, arena, operator_table(info), runtime_bytes, runtime_source, placement, analytic, note,
                        latency, latency_note)


def analytic_arena(info: ModelInfo) -> tuple[int | None, str | None]:
    """(bytes, None) from the analytic TFLM replay, or (None, the reason it does not model `info`)."""
    try:
        return arena_plan(info.model).arena_bytes, None
    except NotModelledError as error:
        return None, str(error)


# ---------------------------------------------------------------------------
# Accuracy


@dataclass
class Evaluation:
    labels: np.ndarray
    predictions: np.ndarray  # int8 model's class per sample
    class_names: tuple[str, ...]
    seconds: float
    workers: int
    float_predictions: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(self.labels)

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")

    @property
    def int8_accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels))

    @property
    def float_accuracy(self) -> float | None:
        if self.float_predictions is None:
            return None
        return float(np.mean(self.float_predictions == self.labels))

    @property
    def agreement(self) -> float | None:
        if self.float_predictions is None:
            return None
        return float(np.mean(self.float_predictions == self.predictions))

    def confusion(self) -> np.ndarray:
        """Rows: true class; columns: int8 prediction."""
        classes = len(self.class_names)
        matrix = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(matrix, (self.labels, self.predictions), 1)
        return matrix

    def per_class_accuracy(self) -> list[float | None]:
        matrix = self.confusion()
        totals = matrix.sum(axis=1)
        return [float(matrix[i, i] / totals[i]) if totals[i] else None for i in range(len(totals))]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "samples": self.samples,
            "int8_accuracy": self.int8_accuracy,
            "per_class_accuracy": dict(zip(self.class_names, self.per_class_accuracy())),
            "confusion_matrix": self.confusion().tolist(),
            "class_names": list(self.class_names),
            "images_per_second": round(self.images_per_second, 2),
            "workers": self.workers,
            "eval_seconds": round(self.seconds, 3),
        }
        if self.float_predictions is not None:
            data.update(float_accuracy=self.float_accuracy, agreement=self.agreement)
        return data


def _input_geometry(info: ModelInfo) -> tuple[tuple[int, int], int]:
    if len(info.inputs) != 1:
        raise DataError(f"--data needs a model with one input; this one has {len(info.inputs)}")
    shape = info.input_tensors[0].shape
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise DataError(f"--data feeds images; the model's input has shape {list(shape)}, not (1, H, W, 1|3)")
    return (shape[1], shape[2]), shape[3]


def output_classes(info: ModelInfo) -> int:
    return element_count(info.output_tensors[0].shape[1:])


def model_inputs(info: ModelInfo, dataset: Dataset) -> np.ndarray:
    """The dataset as the model's input 0: resized, channel-matched images in [0, 1].

    A float32 input gets those floats, what tinyscale trains on (the model's
    QUANTIZE does the rest); an int8 or int16 input gets them quantized with
    its scale and zero point.
    """
    size, channels = _input_geometry(info)
    io = input_quantization(info)
    batches = []
    for start in range(0, len(dataset), 1024):
        floats = network_inputs(dataset.x[start:start + 1024], size, channels)
        batches.append(floats.astype(np.float32) if io.is_float else quantize(floats, io.scale, io.zero_point, io.dtype))
    return np.concatenate(batches)


class _ChunkPlanner:
    """Hands out chunk sizes sized to take ~CHUNK_SECONDS each, from observed speed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds_per_image: float | None = None

    def size(self) -> int:
        with self.lock:
            if self.seconds_per_image is None:
                return FIRST_CHUNK
            return int(min(MAX_CHUNK, max(1, CHUNK_SECONDS / self.seconds_per_image)))

    def observe(self, images: int, seconds: float) -> None:
        with self.lock:
            per_image = seconds / max(1, images)
            self.seconds_per_image = per_image if self.seconds_per_image is None else max(self.seconds_per_image * 0.5, per_image)


def run_parallel(data: bytes, inputs: np.ndarray, arena_bytes: int, workers: int,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Output 0 for every input, computed by `workers` TFLM processes in parallel, in order."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    shards = [shard for shard in np.array_split(np.arange(len(inputs)), workers) if len(shard)]
    planner = _ChunkPlanner()
    done = [0]
    lock = threading.Lock()

    def run_shard(indices: np.ndarray) -> np.ndarray:
        outputs = []
        position = 0
        with tflm.ModelRunner(data, arena_bytes=arena_bytes) as runner:  # one worker start per shard
            while position < len(indices):
                chunk = indices[position:position + planner.size()]
                started = time.perf_counter()
                outputs.append(runner.run(inputs[chunk]))
                planner.observe(len(chunk), time.perf_counter() - started)
                position += len(chunk)
                with lock:
                    done[0] += len(chunk)
                    if progress is not None:
                        progress(done[0])
        return np.concatenate(outputs)

    with ThreadPoolExecutor(max_workers=len(shards)) as pool:
        results = list(pool.map(run_shard, shards))
    return np.concatenate(results)


def float_predictions(keras_model: Any, info: ModelInfo, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """Classes predicted by the float Keras model on the same (float) inputs."""
    size, channels = _input_geometry(info)
    expected = tuple(keras_model.input_shape[1:])
    if expected != (*size, channels):
        raise DataError(f"the Keras model's input {list(expected)} differs from the .tflite's {[*size, channels]}")
    from tinyscale.quiet import quiet_tensorflow  # noqa: PLC0415

    predictions = []
    for start in range(0, len(dataset), batch_size):
        floats = network_inputs(dataset.x[start:start + batch_size], size, channels)
        with quiet_tensorflow():
            scores = keras_model.predict(floats, verbose=0, batch_size=batch_size)
        predictions.append(np.argmax(scores.reshape(len(floats), -1), axis=1))
    return np.concatenate(predictions)


def evaluate(data: bytes, info: ModelInfo, dataset: Dataset, arena_bytes: int, workers: int = 1,
             keras_model: Any = None, progress: Callable[[int], None] | None = None) -> Evaluation:
    """int8 accuracy of the model on `dataset` (and the float model's, when given)."""
    check_classes(dataset, output_classes(info), "the model")
    inputs = model_inputs(info, dataset)
    started = time.perf_counter()
    outputs = run_parallel(data, inputs, arena_bytes, workers, progress)
    seconds = time.perf_counter() - started
    predictions = np.argmax(outputs.reshape(len(outputs), -1), axis=1)
    evaluation = Evaluation(dataset.y.copy(), predictions, dataset.class_names, seconds, workers)
    if keras_model is not None:
        evaluation.float_predictions = float_predictions(keras_model, info, dataset)
    log.info("evaluated %d samples in %.1f s with %d workers", evaluation.samples, seconds, workers)
    return evaluation


# ---------------------------------------------------------------------------
# Plot


def pyplot():
    """matplotlib's pyplot (headless), or a UsageError naming the `plot` extra that installs it."""
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed: install tinyscale's plot extra, "
                         "pip install 'tinyscale[plot]' (in a clone: pip install '.[plot]')") from None
    return plt


def plot_memory(report: MemoryReport, path, budget_bytes: int | None = None) -> None:
    """PNG of live activation bytes per operator, the measured arena and the budget as lines."""
    plt = pyplot()
    from tinyscale.fsutil import atomic_write_bytes  # noqa: PLC0415

    rows = report.rows
    figure, axes = plt.subplots(figsize=(max(6.0, len(rows) * 0.12), 4.0))
    axes.bar([row.index for row in rows], [row.live_bytes / 1024 for row in rows], color="#4C72B0",
             label="live activations")
    axes.axhline(report.arena_bytes / 1024, color="#DD8452", linestyle="--", label="minimal arena (measured)")
    if budget_bytes is not None:
        axes.axhline(budget_bytes / 1024, color="#C44E52", label="arena budget")
    axes.set_xlabel("operator index")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_ylabel("KiB")
    axes.set_title("Activation memory per operator")
    axes.legend(loc="best")
    atomic_write_bytes(path, figure_png(plt, figure))


def figure_png(plt, figure) -> bytes:
    """A finished matplotlib figure as PNG bytes (closed afterwards)."""
    import io  # noqa: PLC0415

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def format_macs(macs: int) -> str:
    if macs >= 1_000_000:
        return f"{macs / 1e6:.2f} M"
    if macs >= 1_000:
        return f"{macs / 1e3:.1f} K"
    return str(macs)


__all__ = [
    "Evaluation", "MemoryReport", "OperatorRow", "check_full_integer", "evaluate", "float_predictions",
    "load_model_bytes", "memory_report", "model_inputs", "operator_table", "plot_memory", "pyplot",
    "run_parallel", "runtime_flash_estimate",
]
