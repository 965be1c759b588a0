"""Shared fixtures: synthetic targets with chosen budgets."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tinyscale.boards.targets import Target, parse_target


def make_target(
    flash_budget: int,
    arena_budgets: list[int] | int,
    *,
    flash_reserved: int = 0,
    name: str = "synthetic",
) -> Target:
    """A board whose model flash and arena budgets are exactly the given bytes."""
    if isinstance(arena_budgets, int):
        arena_budgets = [arena_budgets]
    # Flash from address 0, then the regions back to back: no two ranges overlap.
    origins = [flash_budget + flash_reserved + sum(arena_budgets[:i]) for i in range(len(arena_budgets))]
    memory = [
        {"name": f"ram{i}", "kind": "sram", "size_bytes": budget, "reserved_bytes": 0, "arena": True, "origin": origin}
        for i, (budget, origin) in enumerate(zip(arena_budgets, origins))
    ]
    data = {
        "schema_version": 1,
        "name": name,
        "board": "synthetic test board",
        "core": "Cortex-M4F",
        "cpu": "cortex-m4",
        "clock_hz": 100_000_000,
        "kernel_library": "cmsis-nn",
        "build_system": "cmake-arm",
        "flash": {
            "size_bytes": flash_budget + flash_reserved,
            "budget_bytes": flash_budget + flash_reserved,
            "reserved_bytes": flash_reserved,
            "origin": 0,
        },
        "memory": memory,
    }
    return parse_target(data, source=name)


@pytest.fixture
def synthetic_target():
    return make_target


def repack_model(model: bytes, edit) -> bytes:
    """`model` re-packed after `edit(ModelT)`: a real flatbuffer with one deliberate defect."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    obj = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    edit(obj)
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(obj.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# The quantized layouts tinyscale runs: (activation/weight scheme, input/output type).
IO_KINDS = ("int8-float", "int16-int16", "int16-float")


@functools.cache
def quantized_model(kind: str, per_channel_dense: bool | None = None) -> bytes:
    """A tiny image classifier (8x8 grey, 3 classes) converted with TFLiteConverter as `kind`.

    int8-float is what the converter gives by default with a representative
    dataset (QUANTIZE in, DEQUANTIZE out); int16-* use the int16x8 op set.
    `per_channel_dense` None keeps the converter's per-channel Dense weights for
    int8 and turns them off for int16x8, which CMSIS-NN runs only per tensor.
    """
    import keras
    import tensorflow as tf

    from tinyscale.quiet import quiet_tensorflow

    activations, io = kind.split("-")
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 1), batch_size=1)  # a fixed batch keeps Flatten a plain RESHAPE
    hidden = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    samples = np.random.default_rng(0).random((16, 1, 8, 8, 1), dtype=np.float32)
    with quiet_tensorflow():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample] for sample in samples)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 if activations == "int16"
            else tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
        if not (activations == "int8" if per_channel_dense is None else per_channel_dense):
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if io != "float":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
        return bytes(converter.convert())


@pytest.fixture(autouse=True, scope="session")
def _checkpoints_in_a_temporary_folder(tmp_path_factory):
    """Training checkpoints (train, build) go under the test session's temp folder, not ~/.cache."""
    import os

    from tinyscale.training.train_checkpoint import CHECKPOINT_DIR_VARIABLE

    previous = os.environ.get(CHECKPOINT_DIR_VARIABLE)
    os.environ[CHECKPOINT_DIR_VARIABLE] = str(tmp_path_factory.mktemp("checkpoints"))
    yield
    if previous is None:
        os.environ.pop(CHECKPOINT_DIR_VARIABLE, None)
    else:
        os.environ[CHECKPOINT_DIR_VARIABLE] = previous
