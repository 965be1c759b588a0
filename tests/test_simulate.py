"""Host simulation: integer-model checks, the per-operator table, memory, parallel evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import make_target
from tinyscale import arch, simulate, tflm
from tinyscale.convert import spec_to_tflite
from tinyscale.data import Dataset
from tinyscale.errors import DataError, ModelError
from tinyscale.tflite_model import read_model

# A tflite-micro source checkout (github.com/tensorflow/tflite-micro) for its example models.
TFLM_SOURCE = os.environ.get("TFLM_SOURCE")
TFLM_MODELS = Path(TFLM_SOURCE or ".", "tensorflow/lite/micro")


@pytest.fixture(scope="module")
def tiny():
    """An int8 model of the `tiny` base (random weights, cached conversion) and its spec."""
    spec = arch.scale("tiny", 0, classes=4, channels=1).spec
    return spec, spec_to_tflite(spec)


def _float_tflite(optimize: bool) -> bytes:
    """A small Dense model as float (optimize=False) or dynamic-range quantized (True)."""
    import keras
    import tensorflow as tf

    from tinyscale.quiet import quiet_tensorflow

    inputs = keras.Input(shape=(64,))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Dense(64, activation="relu")(inputs)))
    with quiet_tensorflow():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: hybrid
        return converter.convert()


def test_float_and_hybrid_models_are_refused_with_advice():
    with pytest.raises(ModelError, match="float model; convert it to full int8"):
        simulate.load_model_bytes(_float_tflite(optimize=False))
    with pytest.raises(ModelError, match="dynamic-range \\(hybrid\\)"):
        simulate.load_model_bytes(_float_tflite(optimize=True))


@pytest.mark.parametrize("mangle", [lambda b: b[: len(b) // 3], lambda b: bytes(len(b)),
                                    lambda b: np.random.default_rng(0).bytes(4096), lambda b: b""])
def test_corrupt_truncated_or_random_bytes_are_model_errors(tiny, mangle):
    with pytest.raises(ModelError):
        simulate.memory_report(mangle(tiny[1]))


def test_operator_macs_match_the_architecture_count(tiny):
    spec, model = tiny
    rows = simulate.operator_table(read_model(model))
    # BN folds into the convolutions, so TFLite's conv/FC MACs are the spec's exactly.
    assert sum(row.macs for row in rows) == arch.count_macs(spec)
    first = rows[0]
    assert first.name == "CONV_2D" and first.output_shape == (1, 16, 16, spec.stem_filters)
    # The stem runs with its int8 input and output live: 32*32*1 + 16*16*8 bytes.
    assert first.live_bytes == 32 * 32 + 16 * 16 * spec.stem_filters


def test_memory_report_uses_the_measured_minimal_arena_and_the_target(tiny):
    _, model = tiny
    report = simulate.memory_report(model)
    assert report.arena_bytes == tflm.measure_arena(model).arena_bytes
    # The analytic arena beside it, exact for tinyscale's own models.
    assert report.analytic_arena_bytes == report.arena_bytes
    assert report.to_dict()["analytic_arena_bytes"] == report.arena_bytes
    assert tflm.probe(model, report.arena_bytes) and not tflm.probe(model, report.arena_bytes - 1)
    assert report.flash_needed_bytes == report.model_bytes + simulate.runtime_flash_estimate(report.info.operator_names)
    assert report.peak.live_bytes <= report.arena_bytes
    # SRAM need is the device arena: host minimum + the kernel library's scratch margin.
    # Flash need adds the firmware's embedded self-test input and expected output.
    unbounded = simulate.memory_report(model, make_target(10**9, 10**9)).placement
    device, selftest = unbounded.device_arena_bytes, unbounded.selftest_flash_bytes
    assert device > report.arena_bytes
    assert selftest == sum(t.nbytes for t in (*report.info.input_tensors, *report.info.output_tensors))
    roomy = make_target(report.model_bytes + selftest + 1000, device + 10, flash_reserved=5000)
    data = simulate.memory_report(model, roomy).to_dict()
    assert data["fits"] is True
    assert data["flash_needed_bytes"] == report.model_bytes + selftest + 5000
    assert data["flash_headroom_bytes"] == 1000 and data["sram_headroom_bytes"] == 10
    tight = make_target(report.model_bytes + selftest + 1000, device - 1)
    assert simulate.memory_report(model, tight).to_dict()["fits"] is False


def _dataset(count: int, classes: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(count, 28, 28, 1), dtype=np.uint8)
    return Dataset(x, rng.integers(0, classes, size=count), tuple(f"c{i}" for i in range(classes)), "random")


def test_parallel_evaluation_matches_one_worker(tiny):
    _, model = tiny
    info = read_model(model)
    arena = tflm.measure_arena(model).arena_bytes
    dataset = _dataset(48, 4)
    one = simulate.evaluate(model, info, dataset, arena, workers=1)
    two = simulate.evaluate(model, info, dataset, arena, workers=2)
    assert np.array_equal(one.predictions, two.predictions)
    assert one.int8_accuracy == pytest.approx(np.mean(one.predictions == dataset.y))
    matrix = one.confusion()
    assert matrix.sum() == 48 and np.trace(matrix) == int(round(one.int8_accuracy * 48))
    assert one.images_per_second > 0


def test_class_count_mismatch_is_a_data_error(tiny):
    _, model = tiny
    with pytest.raises(DataError, match="has 3 classes but the model predicts 4"):
        simulate.evaluate(model, read_model(model), _dataset(8, 3), 100_000)


@pytest.mark.skipif(not TFLM_SOURCE or not (TFLM_MODELS / "models").is_dir(),
                    reason="set TFLM_SOURCE to a tflite-micro checkout (with tensorflow/lite/micro/models)")
def test_third_party_models_person_detection_and_lstm():
    person = simulate.memory_report((TFLM_MODELS / "models/person_detect.tflite").read_bytes())
    # Known minimal arena of TFLM's person_detect on x86-64 (shared notes: 85,264 B).
    assert person.arena_bytes == 85_264
    assert "DEPTHWISE_CONV_2D" in person.info.operator_names
    lstm = simulate.memory_report((TFLM_MODELS / "examples/mnist_lstm/trained_lstm_int8.tflite").read_bytes())
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in lstm.info.operator_names
    assert lstm.arena_bytes > 0 and sum(row.macs for row in lstm.rows) > 0
    with pytest.raises(ModelError, match="custom operators"):
        simulate.load_model_bytes((TFLM_MODELS / "models/person_detect_vela.tflite").read_bytes())


@pytest.mark.skipif(not TFLM_SOURCE or not (TFLM_MODELS / "models").is_dir(),
                    reason="set TFLM_SOURCE to a tflite-micro checkout (with tensorflow/lite/micro/models)")
def test_analytic_arena_of_third_party_models_or_why_not():
    person = simulate.memory_report((TFLM_MODELS / "models/person_detect.tflite").read_bytes())
    assert person.analytic_arena_bytes == person.arena_bytes == 85_264
    keyword = read_model((TFLM_MODELS / "models/keyword_scrambled_8bit.tflite").read_bytes())
    analytic, reason = simulate.analytic_arena(keyword)  # SVDF, int16 activations
    assert analytic is None and "not modelled" in reason
