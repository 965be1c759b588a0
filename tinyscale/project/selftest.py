"""The self-test vectors a project embeds: a deterministic input and the host interpreter's output."""

from __future__ import annotations

import numpy as np

from tinyscale.errors import ModelError
from tinyscale.graph.model import element_count
from tinyscale.graph.tflite_model import IoQuantization
from tinyscale.project.context import FLOAT_TOLERANCE_EPSILON_STEPS, TensorData

SELFTEST_SEED = 0


def selftest_input(io: IoQuantization, seed: int = SELFTEST_SEED) -> np.ndarray:
    """A deterministic input covering the whole range of the graph's integer type (batch of one).

    For a float32 input, the same random integers dequantized: each value sits
    on a quantization step, so the device's QUANTIZE meets no rounding tie.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(max(d, 1) for d in io.tensor.shape)
    limits = np.iinfo(io.dtype)
    codes = rng.integers(limits.min, limits.max + 1, size=shape, dtype=io.dtype)
    if io.is_float:
        return ((codes.astype(np.float64) - io.zero_point) * io.scale).astype(np.float32)
    return codes


def host_expected_output(model: bytes, inputs: np.ndarray, arena_bytes: int) -> np.ndarray:
    """Output 0 of the host TFLM interpreter for the self-test input, flat, in the output's type."""
    from tinyscale.simulation import tflm  # noqa: PLC0415 - starts a TFLM worker process

    batch = inputs if inputs.shape[0] == 1 else inputs[np.newaxis]
    outputs = tflm.run_model(model, batch, arena_bytes=arena_bytes)
    return np.asarray(outputs).reshape(-1)


def output_tolerance(io: IoQuantization, steps: int) -> float:
    """Largest |device - host| per output value: quantization steps, in float units for a float output."""
    if io.is_float:
        return (steps + FLOAT_TOLERANCE_EPSILON_STEPS) * io.scale
    return float(steps)


def selftest_tensor(io: IoQuantization, values: np.ndarray, tolerance: float = 0.0) -> TensorData:
    """The embedded vector of `io`'s tensor: `values` in the tensor's own type, checked against its shape."""
    tensor = io.tensor
    flat = np.asarray(values, dtype=tensor.dtype).reshape(-1)
    count = element_count(tensor.shape)
    if flat.size != count:
        raise ModelError(f"self-test data has {flat.size} values, tensor {tensor.name!r} {list(tensor.shape)} {count}")
    if tensor.dtype == "float32" and not np.all(np.isfinite(flat)):
        raise ModelError(f"the host interpreter gave non-finite values for {tensor.name!r}; no self-test can compare them")
    python_values = tuple(float(v) for v in flat) if tensor.dtype == "float32" else tuple(int(v) for v in flat)
    return TensorData(tensor.name, tensor.shape, tensor.dtype, python_values, tolerance)
