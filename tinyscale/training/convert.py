"""Keras model -> full-integer int8 TFLite flatbuffer, with an on-disk cache.

TensorFlow is imported inside the functions only. Conversion output (thousands
of lines from C++) is silenced at the fd level and quoted on failure.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tinyscale import __version__
from tinyscale.errors import ConversionError, TinyscaleError, one_line
from tinyscale.fsutil import atomic_write_bytes
from tinyscale.network.arch import NetworkSpec
from tinyscale.quiet import quiet_tensorflow

log = logging.getLogger(__name__)

CACHE_DIR_VARIABLE = "TINYSCALE_CACHE_DIR"
NO_CACHE_VARIABLE = "TINYSCALE_NO_CACHE"
# Calibration batch for spec_to_tflite: enough images for stable BN statistics
# of an untrained net, few enough that calibration stays a small part of the time.
MEMORY_CALIBRATION_SAMPLES = 8
# Part of the cache key: bump when convert_spec's recipe (initialisation,
# calibration, converter settings) changes, so stale flatbuffers are not reused.
RECIPE_VERSION = "2"


def random_representative_data(input_shape: tuple[int, ...], count: int = 8, seed: int = 0) -> np.ndarray:
    """`count` float32 images of `input_shape`, uniform in [0, 1] (memory measurement only)."""
    rng = np.random.default_rng(seed)
    return rng.random((count, *input_shape), dtype=np.float32)


def _failure_reason(error: Exception, captured_text: str) -> str:
    """TF's own last error line when it printed one, else the exception text."""
    for line in reversed(captured_text.splitlines()):
        if "error" in line.lower():
            return one_line(line)
    return one_line(f"{type(error).__name__}: {error}")


def _frozen_graph_converter(tf: Any, model: Any) -> Any:
    """A TFLiteConverter over the model's inference graph with weights frozen in.

    Why not `from_keras_model`: with Keras 3 it exports a whole SavedModel to a
    temporary directory first, which made conversion ~5x slower here (16 s vs
    3 s for a phi=-7.7 lite0 under load); `fit` must verify within seconds.
    """
    from tensorflow.python.framework.convert_to_constants import (  # noqa: PLC0415
        convert_variables_to_constants_v2,
    )

    input_shape = (1, *model.inputs[0].shape[1:])
    inference = tf.function(lambda images: model(images, training=False))
    concrete = inference.get_concrete_function(tf.TensorSpec(input_shape, tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(concrete)])


def convert_keras_model(model: Any, representative: np.ndarray, *, max_samples: int = 100) -> bytes:
    """Full-integer int8 flatbuffer (int8 input and output) of a Keras model.

    `representative` is a batch of float32 inputs in the model's input range,
    used to calibrate the activation ranges (at most `max_samples` of them).
    """
    samples = np.asarray(representative, dtype=np.float32)[:max_samples]
    if len(samples) == 0:
        raise ConversionError("no representative samples to calibrate the int8 ranges")

    def representative_dataset():
        for sample in samples:
            yield [sample[np.newaxis]]

    started = time.perf_counter()
    with quiet_tensorflow() as captured, warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": harmless, the int8
        # input's range is the representative data's, which the converter has.
        warnings.simplefilter("ignore", UserWarning)
        try:
            import tensorflow as tf  # noqa: PLC0415 - heavy; only the converter needs it

            tf.get_logger().setLevel(logging.ERROR)
            converter = _frozen_graph_converter(tf, model)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            flatbuffer = converter.convert()
            error = None
        except Exception as caught:  # TF raises many unrelated types; all mean "cannot convert"
            error = caught
    if error is not None:
        raise ConversionError(f"TFLite conversion failed: {_failure_reason(error, captured.text)}") from error
    log.info("converted %s to int8 in %.1f s (%d bytes)", getattr(model, "name", "model"),
             time.perf_counter() - started, len(flatbuffer))
    return bytes(flatbuffer)


def calibrate_batchnorm(model: Any, data: np.ndarray) -> None:
    """Set every BN layer's moving statistics to its batch statistics on `data`.

    Why: an *untrained* network (random weights, BN moving mean 0 / variance 1)
    lets activations drift layer after layer; in B0 (swish, SE gates ~0.5) they
    shrink so much that all logits are equal to ~1e-8. The converter then gives
    the softmax input a scale so small that TFLM's softmax Prepare cannot build
    its fixed-point multiplier and abort()s while allocating. One training-mode
    pass with momentum 0 copies each layer's batch mean/variance into its moving
    statistics, all layers at once (each BN normalises with batch statistics in
    training mode, so downstream statistics already see normalised inputs). The
    network then behaves like a trained one range-wise: unit-scale activations
    and logits of order 1, hence sane quantization parameters everywhere.
    """
    batchnorms = [layer for layer in model.layers if hasattr(layer, "moving_variance")]
    momenta = [layer.momentum for layer in batchnorms]
    try:
        for layer in batchnorms:
            layer.momentum = 0.0
        model(data, training=True)
    finally:
        for layer, momentum in zip(batchnorms, momenta):
            layer.momentum = momentum


# The classifier of a measurement-only model: per-class bias b_j = -SLOPE * j
# and the feature weights shrunk by FEATURE_SCALE (see spread_logits).
LOGIT_BIAS_SLOPE = 0.5
LOGIT_FEATURE_SCALE = 0.1


def spread_logits(model: Any) -> None:
    """Give an untrained classifier logits that TFLM's int8 softmax can evaluate.

    Why: TFLM's reference int8 softmax fixes the sum of exp(logit - max) in
    Q12 fixed point and then shifts by (bits of that sum above 1) + 23; gemmlowp
    asserts the shift is <= 31, so the sum must stay below 2**9. A random
    classifier gives near-equal logits, a sum of about `classes`, and invoke()
    abort()s for ~500+ classes (measured: 500 runs, 999 and 1000 abort; a
    trained model is confident, so its sum stays small). A bias that falls by
    0.5 per class bounds the sum by 1 / (1 - e**-0.5) ~ 2.5, times e**(2F) for
    the feature part F, kept small (|F| < ~0.3) by shrinking the kernel. Only
    values change, not shapes, so the measured memory is unaffected.
    """
    classifier = model.get_layer("logits")
    kernel, bias = classifier.get_weights()
    ramp = -LOGIT_BIAS_SLOPE * np.arange(bias.shape[0], dtype=bias.dtype)
    classifier.set_weights([kernel * LOGIT_FEATURE_SCALE, ramp])


# ---------------------------------------------------------------------------
# spec -> flatbuffer, cached


def tensorflow_version() -> str:
    """The installed TensorFlow's version, read from its package metadata (no import of TensorFlow)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    for name in ("tensorflow-cpu", "tensorflow"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def cache_key(spec: NetworkSpec, seed: int) -> str:
    text = "\n".join((repr(spec), str(seed), __version__, RECIPE_VERSION, tensorflow_version()))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_root() -> Path:
    """tinyscale's cache folder: $TINYSCALE_CACHE_DIR, else ~/.cache/tinyscale (conversions, checkpoints)."""
    configured = os.environ.get(CACHE_DIR_VARIABLE)
    return Path(configured) if configured else Path.home() / ".cache" / "tinyscale"


def cache_dir() -> Path | None:
    """The conversion cache, or None when caching is disabled by TINYSCALE_NO_CACHE=1."""
    if os.environ.get(NO_CACHE_VARIABLE, "") not in ("", "0"):
        return None
    return cache_root()


def _read_cached(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write_cache(path: Path, data: bytes) -> None:
    """A cache that cannot be written is not fatal: the conversion still stands."""
    try:
        atomic_write_bytes(path, data)
    except TinyscaleError as error:
        log.warning("could not write conversion cache: %s", error)


def convert_spec(spec: NetworkSpec, *, seed: int = 0) -> bytes:
    """Build `spec` with seeded random weights and convert it (no cache)."""
    from tinyscale.training.keras_builder import build_keras_model  # noqa: PLC0415 - imports Keras

    started = time.perf_counter()
    data = random_representative_data(spec.input_shape, MEMORY_CALIBRATION_SAMPLES, seed)
    with quiet_tensorflow() as captured:
        try:
            model = build_keras_model(spec, seed=seed)
            calibrate_batchnorm(model, data)
            spread_logits(model)
            error = None
        except Exception as caught:  # Keras raises many types; all mean "cannot build"
            error = caught
    if error is not None:
        raise ConversionError(f"could not build the Keras model: {_failure_reason(error, captured.text)}") from error
    built = time.perf_counter()
    flatbuffer = convert_keras_model(model, data)
    log.info("built %s (%d px, %d blocks) in %.1f s (TensorFlow import included), converted in %.1f s",
             spec.base, spec.resolution, len(spec.blocks), built - started, time.perf_counter() - built)
    return flatbuffer


def spec_to_tflite(spec: NetworkSpec, *, seed: int = 0) -> bytes:
    """The int8 flatbuffer of `spec` with seeded random weights (cached on disk).

    For memory measurement: the same spec and seed always give the same bytes.
    """
    directory = cache_dir()
    path = directory / f"{cache_key(spec, seed)}.tflite" if directory else None
    if path is not None:
        cached = _read_cached(path)
        if cached is not None:
            log.info("conversion cache hit %s", path)
            return cached
    flatbuffer = convert_spec(spec, seed=seed)
    if path is not None:
        _write_cache(path, flatbuffer)
    return flatbuffer
