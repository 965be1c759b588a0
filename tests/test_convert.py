"""Keras -> int8 flatbuffer conversion, its determinism and its cache."""

from __future__ import annotations

import numpy as np
import pytest

from tinyscale.errors import ConversionError
from tinyscale.graph.tflite_model import read_model
from tinyscale.network import arch
from tinyscale.training.convert import (
    convert_keras_model,
    random_representative_data,
    spec_to_tflite,
)

pytest.importorskip("tensorflow")


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv("TINYSCALE_NO_CACHE", "1")


def test_representative_data_is_seeded_float_in_unit_range():
    data = random_representative_data((8, 8, 3), count=4, seed=3)
    assert data.shape == (4, 8, 8, 3) and data.dtype == np.float32
    assert 0.0 <= data.min() and data.max() <= 1.0
    assert np.array_equal(data, random_representative_data((8, 8, 3), count=4, seed=3))


def test_same_spec_converts_to_identical_int8_bytes(no_cache):
    spec = arch.scale("tiny-se", 0).spec
    first = spec_to_tflite(spec)
    second = spec_to_tflite(spec)
    assert first == second
    info = read_model(first)
    (inp,) = info.input_tensors
    (out,) = info.output_tensors
    assert inp.dtype == out.dtype == "int8"
    assert inp.shape == (1, *spec.input_shape) and out.shape == (1, spec.classes)
    # Inputs in [0, 1] map pixel p to p - 128 exactly.
    assert inp.zero_point == (-128,) and abs(inp.scale[0] - 1 / 255) < 1e-6


def test_cache_returns_the_converted_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TINYSCALE_NO_CACHE", raising=False)
    spec = arch.scale("tiny", 0, classes=3).spec
    converted = spec_to_tflite(spec)
    files = list(tmp_path.glob("*.tflite"))
    assert len(files) == 1 and files[0].read_bytes() == converted
    files[0].write_bytes(b"marker")  # a hit must come from the cache, not a new conversion
    assert spec_to_tflite(spec) == b"marker"
    assert not list(tmp_path.glob(".tmp-*"))


def test_conversion_failure_is_a_conversion_error():
    with pytest.raises(ConversionError):
        convert_keras_model(object(), np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ConversionError):
        convert_keras_model(object(), np.zeros((0, 4, 4, 3), np.float32))


def test_batchnorm_calibration_normalises_an_untrained_network():
    import keras

    from tinyscale.training.convert import calibrate_batchnorm
    from tinyscale.training.keras_builder import build_keras_model

    spec = arch.scale("tiny-se", 0).spec
    model = build_keras_model(spec)
    data = random_representative_data(spec.input_shape, count=8)
    calibrate_batchnorm(model, data)
    head = keras.Model(model.input, model.get_layer("head_bn").output)
    out = np.asarray(head(data, training=False))
    assert abs(out.mean()) < 0.05 and abs(out.var() - 1.0) < 0.05
    assert model.get_layer("head_bn").momentum == 0.99  # restored


def test_many_class_untrained_model_runs_in_tflm(no_cache):
    pytest.importorskip("tflite_micro")
    from tinyscale.simulation.tflm import measure_arena

    # Near-uniform logits over 1000 classes made TFLM's int8 softmax abort().
    model = spec_to_tflite(arch.scale("tiny", 0, classes=1000).spec)
    assert measure_arena(model).arena_bytes > 0  # includes an invoke at the minimal arena


def test_quiet_tensorflow_captures_fd_output_and_restores_fds_on_errors():
    import os

    from tinyscale.quiet import quiet_tensorflow

    before = os.fstat(1).st_ino, os.fstat(2).st_ino
    with pytest.raises(RuntimeError), quiet_tensorflow() as captured:
        os.write(1, b"from C to stdout\n")
        os.write(2, b"from C to stderr\n")
        raise RuntimeError("boom")
    assert "from C to stdout" in captured.text and "from C to stderr" in captured.text
    assert (os.fstat(1).st_ino, os.fstat(2).st_ino) == before
    assert "TF_CPP_MIN_LOG_LEVEL" in os.environ  # set before TensorFlow is imported
